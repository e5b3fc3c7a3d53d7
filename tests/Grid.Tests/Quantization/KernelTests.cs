using Grid.ModelCore.Kernels;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests.Quantization;

/// <summary>The small-batch kernels against libtorch: float32 and 8-bit weights, odd shapes, grouped experts, FP8 coding.</summary>
public class KernelTests
{
    static Tensor Random(long rows, long cols, int seed)
    {
        var g = new Generator((ulong)seed);
        return randn([rows, cols], generator: g);
    }

    static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [InlineData(1, 37, 200)]      // rows not a multiple of 4, columns not a multiple of 8
    [InlineData(3, 64, 1024)]
    [InlineData(16, 130, 352)]    // a decode-sized batch (any batch: see InvariantGemmTests)
    public void Float32KernelMatchesLibtorchLinear(int m, int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(m, k, 1);
        var w = LinearWeight.Create(Random(n, k, 2), WeightQuantization.None);
        try
        {
            using var dense = w.Unpack();
            var expected = linear(x, dense);
            var actual = w.KernelForward(x);
            Assert.Equal(new long[] { m, n }, actual.shape);
            Assert.True(MaxAbs(expected, actual) < 1e-4 * Math.Sqrt(k), $"max diff {MaxAbs(expected, actual)}");
        }
        finally { w.Dispose(); }
    }

    [Theory]
    [InlineData(WeightQuantization.Int8, 1, 37, 200)]
    [InlineData(WeightQuantization.Int8, 5, 64, 1024)]
    [InlineData(WeightQuantization.Fp8, 1, 130, 352)]
    [InlineData(WeightQuantization.Fp8, 7, 37, 200)]
    public void QuantizedKernelComputesWithTheQuantizedValues(WeightQuantization format, int m, int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(m, k, 3);
        var weight = Random(n, k, 4);
        var reference = weight.clone();
        var w = LinearWeight.Create(weight, format);
        try
        {
            Assert.Equal(format, w.Quantization);
            using var dequantized = w.Quantized!.Dequantize();
            // The kernel computes with exactly the stored values...
            Assert.True(MaxAbs(linear(x, dequantized), w.Forward(x)) < 1e-4 * Math.Sqrt(k));
            // ...and those are the float weights within the format's rounding: int8 half a step of absmax/127 per
            // 32-column block; FP8 3 mantissa bits (relative 2^-4) above its subnormals.
            double maxError = MaxAbs(reference, dequantized);
            double amax = reference.abs().max().item<float>();
            double bound = format == WeightQuantization.Int8 ? amax / 127 / 2 * 1.001 : amax / 16;
            Assert.True(maxError <= bound, $"{format}: max weight error {maxError} above {bound}");
            // Large batches go through the 8-bit GEMM: the same numbers.
            var big = Random(40, k, 5);
            Assert.True(MaxAbs(linear(big, dequantized), w.Forward(big)) < 1e-4 * Math.Sqrt(k));
        }
        finally { w.Dispose(); }
    }

    [Fact]
    public void Fp8CodesDecodeAndEncodeAsE4M3()
    {
        // Known values of E4M3 (OCP "fn"): 448 max, 2^-6 smallest normal, 2^-9 smallest subnormal, NaN at 0x7F.
        Assert.Equal(448f, Fp8E4M3.Decode(0x7E));
        Assert.Equal(-448f, Fp8E4M3.Decode(0xFE));
        Assert.Equal(1f, Fp8E4M3.Decode(0x38));
        Assert.Equal(MathF.ScaleB(1, -6), Fp8E4M3.Decode(0x08));
        Assert.Equal(MathF.ScaleB(1, -9), Fp8E4M3.Decode(0x01));
        Assert.True(float.IsNaN(Fp8E4M3.Decode(0x7F)));
        // Every finite code round-trips, and the in-register decode agrees with the table for all of them.
        var codes = Enumerable.Range(0, 256).Where(c => !Fp8E4M3.IsNaN((byte)c)).Select(c => (byte)c).ToArray();
        foreach (var c in codes)
        {
            float v = Fp8E4M3.Decode(c);
            Assert.Equal(v == 0 ? (byte)(c & 0x80) : c, Fp8E4M3.Encode(v));
        }
        // Encoding picks the nearest code (ties to the even code), saturating at 448.
        var rng = new Random(11);
        var finite = codes.Select(Fp8E4M3.Decode).Distinct().OrderBy(v => v).ToArray();
        for (int i = 0; i < 20000; i++)
        {
            float v = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-12, 10)));
            float got = Fp8E4M3.Decode(Fp8E4M3.Encode(v));
            float clamped = Math.Clamp(v, -448f, 448f);
            double best = finite.Min(f => Math.Abs(f - (double)clamped));
            Assert.True(Math.Abs(got - (double)clamped) <= best, $"{v} encoded as {got}, nearest is {best} away");
        }
        Assert.Equal(448f, Fp8E4M3.Decode(Fp8E4M3.Encode(1e6f)));
    }

    [Theory]
    [InlineData(WeightQuantization.None)]
    [InlineData(WeightQuantization.Int8)]
    [InlineData(WeightQuantization.Fp8)]
    public unsafe void GroupedExpertsMatchOneMatmulPerExpert(WeightQuantization format)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int d = 96, inter = 40, tokens = 5;
        var x = Random(tokens, d, 6);
        var experts = Enumerable.Range(0, 3).Select(e => (
            GateUp: LinearWeight.Create(Random(2 * inter, d, 10 + e), format),
            Down: LinearWeight.Create(Random(d, inter, 20 + e), format))).ToArray();
        try
        {
            // expert 0: tokens 0, 2, 4; expert 1: token 1; expert 2: tokens 0, 1, 2, 3, 4.
            long[][] rows = [[0, 2, 4], [1], [0, 1, 2, 3, 4]];
            float[][] weights = [[0.5f, 0.25f, 1f], [2f], [0.1f, 0.2f, 0.3f, 0.4f, 0.5f]];
            AssertGroupedExpertsMatchReference(experts, rows, weights, x, d);
        }
        finally
        {
            foreach (var (g, dn) in experts) { g.Dispose(); dn.Dispose(); }
        }
    }

    /// <summary>
    /// <see cref="GroupedExperts.Run"/> over <paramref name="experts"/> (expert e gets the token rows <paramref name="rows"/>[e]
    /// with routing weights <paramref name="weights"/>[e]) against libtorch on the unpacked (dequantized) weights: within
    /// 1e-3 for float32 and FP8; int8 quantizes each input row to int16 per block of columns (relative error up to 2^-16 of
    /// the block's absmax per input), so there the bound is 1e-4 of the output's largest magnitude.
    /// </summary>
    internal static unsafe void AssertGroupedExpertsMatchReference((LinearWeight GateUp, LinearWeight Down)[] experts, long[][] rows, float[][] weights, Tensor x, int d)
    {
        var expected = zeros(x.shape[0], d);
        for (int e = 0; e < experts.Length; e++)
        {
            using var gu = experts[e].GateUp.Unpack();
            using var dn = experts[e].Down.Unpack();
            var index = tensor(rows[e]);
            var h = linear(x.index_select(0, index), gu).chunk(2, -1);
            var y = linear(silu(h[0]) * h[1], dn) * tensor(weights[e], [rows[e].Length, 1]);
            expected.index_add_(0, index, y, 1.0);
        }
        var actual = zeros(x.shape[0], d);
        var work = experts.Select((ex, e) => new ExpertWork(ex.GateUp, ex.Down, rows[e].ToList(), weights[e].ToList())).ToList();
        GroupedExperts.Run(work, TensorMemory.Pointer<float>(x), d, TensorMemory.Pointer<float>(actual));
        double largest = expected.abs().max().item<float>();
        double bound = experts[0].GateUp.Quantization == WeightQuantization.Int8 ? 1e-4 * largest : 1e-3;
        Assert.True(MaxAbs(expected, actual) < bound, $"max diff {MaxAbs(expected, actual)}, largest output {largest}");
        Assert.True(actual.abs().sum().item<float>() > 1);
    }
}
