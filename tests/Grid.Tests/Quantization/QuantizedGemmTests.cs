using Grid.ModelCore.Kernels;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests.Quantization;

/// <summary>The 8-bit GEMM: the dequantized values' matmul for any batch, the same bits for a row in any batch and on
/// every path, FP8 codes decoded exactly, and 8-bit experts for prefill-sized token counts.</summary>
public class QuantizedGemmTests
{
    static Tensor Random(long rows, long cols, int seed) => randn([rows, cols], generator: new Generator((ulong)seed));

    static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    static bool SameBits(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.contiguous().data<float>().ToArray().Select(BitConverter.SingleToInt32Bits)
            .SequenceEqual(b.contiguous().data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));

    [Theory]
    [InlineData(WeightQuantization.Int8, 37, 200)]   // rows not a multiple of 4, columns not a multiple of 16
    [InlineData(WeightQuantization.Int8, 130, 1024)]
    [InlineData(WeightQuantization.Fp8, 130, 352)]   // a partial 128-column block
    [InlineData(WeightQuantization.Fp8, 5, 203)]
    public void GemmEqualsDequantizedMatmulForAnyBatch(WeightQuantization format, int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var w = LinearWeight.Create(Random(n, k, 4), format);
        try
        {
            using var dequantized = w.Quantized!.Dequantize();
            foreach (int m in new[] { 1, 5, 16, 17, 64, 300 })
            {
                var x = Random(m, k, 100 + m);
                var actual = w.KernelForward(x);
                Assert.Equal(new long[] { m, n }, actual.shape);
                double diff = MaxAbs(linear(x, dequantized), actual);
                Assert.True(diff < 1e-4 * Math.Sqrt(k), $"{format} M={m}: max diff {diff}");
                Assert.True(w.KernelsTake(m));
            }
        }
        finally { w.Dispose(); }
    }

    [Theory]
    [InlineData(WeightQuantization.Int8, 70, 203)]
    [InlineData(WeightQuantization.Int8, 64, 1024)]
    [InlineData(WeightQuantization.Fp8, 70, 203)]
    [InlineData(WeightQuantization.Fp8, 33, 352)]
    public void RowResultsAreTheSameBitsInEveryBatchAndOnEveryPath(WeightQuantization format, int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var w = LinearWeight.Create(Random(n, k, 7), format);
        try
        {
            var x = Random(300, k, 8);
            var all = w.KernelForward(x);                                   // prefill-sized: the dequantized panels
            foreach (int m in new[] { 1, 2, 3, 4, 5, 16, 17, 64 })
            {
                var part = w.KernelForward(x.narrow(0, 0, m).contiguous());   // decode-sized: codes decoded in registers
                Assert.True(SameBits(all.narrow(0, 0, m), part), $"{format}: the first {m} rows differ between M={m} and M=300");
            }
            foreach (int row in new[] { 1, 150, 299 })
                Assert.True(SameBits(all.narrow(0, row, 1), w.KernelForward(x.narrow(0, row, 1).contiguous())), $"{format}: row {row} alone differs");
            Assert.True(SameBits(all.narrow(0, 0, 1), w.KernelForward(x.narrow(0, 0, 1).contiguous(), scalar: true)), "scalar path, one row");
            Assert.True(SameBits(all.narrow(0, 0, 7), w.KernelForward(x.narrow(0, 0, 7).contiguous(), scalar: true)), "scalar path, seven rows");
        }
        finally { w.Dispose(); }
    }

    /// <summary>
    /// int8 against its definition, written out here element by element: each input row quantized per block of columns to
    /// int16 (round half to even of x · 32767 / absmax, scale absmax / 32767), the exact int32 sum of code · xq per block,
    /// folded as acc = fma(sum, scale · xs, acc) in increasing block order from +0. The same bits for every batch size, on
    /// the AVX-512 and the scalar path.
    /// </summary>
    [Theory]
    [InlineData(37, 203, 32)]    // rows not a multiple of the 32-row panel, odd K, a partial last block
    [InlineData(64, 1024, 32)]
    [InlineData(33, 352, 128)]   // wider blocks (the benchmark's block table)
    public void Int8IsTheBlockSumArithmeticBitForBit(int n, int k, int blockCols)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var q = QuantizedMatrix.Quantize(Random(n, k, 31), WeightQuantization.Int8, blockCols);
        var w = LinearWeight.FromQuantized(q);
        try
        {
            var x = Random(300, k, 32);
            x[5] = zeros(k);   // an all-zero row: zero scales, zero output
            var xv = x.data<float>().ToArray();
            int blocks = (k + blockCols - 1) / blockCols;
            var expected = new float[300 * n];
            for (int m = 0; m < 300; m++)
            {
                var xq = new int[k];
                var xs = new float[blocks];
                for (int b = 0; b < blocks; b++)
                {
                    int c0 = b * blockCols, c1 = Math.Min(k, c0 + blockCols);
                    float amax = 0;
                    for (int c = c0; c < c1; c++) amax = MathF.Max(amax, MathF.Abs(xv[m * k + c]));
                    float inv = amax > 0 ? 32767f / amax : 0f;
                    xs[b] = amax / 32767f;
                    for (int c = c0; c < c1; c++) xq[c] = (int)MathF.Round(xv[m * k + c] * inv, MidpointRounding.ToEven);
                }
                for (int r = 0; r < n; r++)
                {
                    float acc = 0f;
                    for (int b = 0; b < blocks; b++)
                    {
                        int sum = 0;
                        for (int c = b * blockCols; c < Math.Min(k, (b + 1) * blockCols); c++) sum += (sbyte)q.Code(r, c) * xq[c];
                        acc = MathF.FusedMultiplyAdd(sum, q.Scale(r, b) * xs[b], acc);
                    }
                    expected[m * n + r] = acc;
                }
            }
            var reference = tensor(expected, [300, n]);
            foreach (int m in new[] { 1, 2, 4, 5, 9, 48, 49, 300 })
                Assert.True(SameBits(reference.narrow(0, 0, m), w.KernelForward(x.narrow(0, 0, m).contiguous())), $"M={m} differs from the definition");
            Assert.True(SameBits(reference.narrow(0, 0, 9), w.KernelForward(x.narrow(0, 0, 9).contiguous(), scalar: true)), "scalar path");
            Assert.All(w.KernelForward(x.narrow(0, 5, 1).contiguous()).data<float>().ToArray(), v => Assert.Equal(0f, v));
        }
        finally { w.Dispose(); }
    }

    /// <summary>FP8 gives exactly the float32 GEMM's bits over its dequantized weights, for every batch size and path
    /// (codes decoded in registers up to 4 rows, decoded panels and the float32 micro-kernel above).</summary>
    [Theory]
    [InlineData(70, 300)]   // a partial 128-column block, a partial 32-row panel
    [InlineData(33, 1024)]
    public void Fp8IsTheFloat32GemmOverTheDequantizedWeights(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var w = LinearWeight.Create(Random(n, k, 41), WeightQuantization.Fp8);
        var f32 = LinearWeight.Create(w.Unpack(), WeightQuantization.None);
        try
        {
            Assert.True(f32.IsFloat32);
            var x = Random(300, k, 42);
            foreach (int m in new[] { 1, 2, 3, 4, 5, 16, 17, 300 })
            {
                var xm = x.narrow(0, 0, m).contiguous();
                Assert.True(SameBits(f32.KernelForward(xm), w.KernelForward(xm)), $"M={m}");
            }
            Assert.True(SameBits(f32.KernelForward(x.narrow(0, 0, 2).contiguous()), w.KernelForward(x.narrow(0, 0, 2).contiguous(), scalar: true)), "scalar path");
        }
        finally { w.Dispose(); f32.Dispose(); }
    }

    /// <summary>The panel layout is only storage: the row-major view (codes, scales, values) is the quantization's, and
    /// stacking by rows across a panel boundary keeps every row.</summary>
    [Theory]
    [InlineData(WeightQuantization.Int8)]
    [InlineData(WeightQuantization.Fp8)]
    public void PanelsKeepTheRowMajorView(WeightQuantization format)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int k = 45;
        var top = Random(37, k, 51);
        var bottom = Random(20, k, 52);
        using var qt = QuantizedMatrix.Quantize(top, format);
        using var qb = QuantizedMatrix.Quantize(bottom, format);
        using var stacked = QuantizedMatrix.StackRows(qt, qb);
        Assert.Equal(57, stacked.Rows);
        for (int r = 0; r < 57; r++)
            for (int c = 0; c < k; c++)
            {
                var (from, row) = r < 37 ? (qt, r) : (qb, r - 37);
                Assert.Equal(from.Code(row, c), stacked.Code(r, c));
                Assert.Equal(from.Value(row, c), stacked.Value(r, c));
            }
        using var d = qt.Dequantize();
        var values = d.data<float>().ToArray();
        for (int r = 0; r < 37; r++)
            for (int c = 0; c < k; c++) Assert.Equal(qt.Value(r, c), values[r * k + c]);
        Assert.True(MaxAbs(d, top) < (format == WeightQuantization.Int8 ? 0.02 : 0.2));
    }

    [Fact]
    public void Fp8KernelsDecodeEveryCodeAsTheReference()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        // Row r holds code (r + c) mod 256 in column c: every code in every column position; scale 1.
        const int rows = 256, cols = 256;
        var codes = new byte[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) codes[r * cols + c] = (byte)((r + c) % 256);
        using var withNaN = QuantizedMatrix.FromFp8Blocks(codes, rows, cols, [1f, 1f, 1f, 1f]);
        Assert.True(withNaN.HasNaNCodes);
        using (var d = withNaN.Dequantize())
        {
            var values = d.data<float>().ToArray();
            for (int i = 0; i < values.Length; i++)
                Assert.Equal(BitConverter.SingleToInt32Bits(Fp8E4M3.Decode(codes[i])), BitConverter.SingleToInt32Bits(values[i]));
        }
        // Without the NaN codes (0x7F, 0xFF -> 0x00) the in-register decode runs: a one-hot input picks out one
        // column exactly (w · 1 plus zeros), for each of the register path (M = 1) and the panel path (M = 5).
        var finite = codes.Select(b => Fp8E4M3.IsNaN(b) ? (byte)0 : b).ToArray();
        using var q = QuantizedMatrix.FromFp8Blocks(finite, rows, cols, [1f, 1f, 1f, 1f]);
        Assert.False(q.HasNaNCodes);
        var w = LinearWeight.FromQuantized(q);
        foreach (int m in new[] { 1, 5 })
            for (int c = 0; c < cols; c += 37)
            {
                var x = zeros(m, cols);
                x[m - 1, c] = tensor(1f);
                var y = w.KernelForward(x)[m - 1].data<float>().ToArray();
                for (int r = 0; r < rows; r++)
                    Assert.Equal(Fp8E4M3.Decode(finite[r * cols + c]), y[r]);
            }
        // Scales too large for the 2^120 to fold into them exactly: the kernels decode through the table, same values.
        using var large = QuantizedMatrix.FromFp8Blocks(finite, rows, cols, [1000f, 0.5f, 2f, 1f]);
        var wl = LinearWeight.FromQuantized(large);
        var one = zeros(1, cols);
        one[0, 200] = tensor(1f);
        var yl = wl.KernelForward(one)[0].data<float>().ToArray();
        for (int r = 0; r < rows; r++)
            Assert.Equal(Fp8E4M3.Decode(finite[r * cols + 200]) * (r < 128 ? 0.5f : 1f), yl[r]);   // column 200: the second block column
    }

    [Theory]
    [InlineData(WeightQuantization.Int8)]
    [InlineData(WeightQuantization.Fp8)]
    public unsafe void EightBitExpertsTakePrefillSizedTokenCounts(WeightQuantization format)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int d = 96, inter = 40, tokens = 40;
        var x = Random(tokens, d, 6);
        var experts = Enumerable.Range(0, 2).Select(e => (
            GateUp: LinearWeight.Create(Random(2 * inter, d, 10 + e), format),
            Down: LinearWeight.Create(Random(d, inter, 20 + e), format))).ToArray();
        try
        {
            long[][] rows = [Enumerable.Range(0, tokens).Select(t => (long)t).ToArray(), Enumerable.Range(0, tokens / 2).Select(t => (long)(2 * t)).ToArray()];
            float[][] weights = [rows[0].Select(t => 0.5f + t / 100f).ToArray(), rows[1].Select(t => 1f - t / 100f).ToArray()];
            KernelTests.AssertGroupedExpertsMatchReference(experts, rows, weights, x, d);
        }
        finally
        {
            foreach (var (g, dn) in experts) { g.Dispose(); dn.Dispose(); }
        }
    }
}
