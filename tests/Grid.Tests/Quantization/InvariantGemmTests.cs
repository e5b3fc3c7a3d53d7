using Grid.ModelCore.Kernels;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests.Quantization;

/// <summary>
/// The batch-invariant float32 GEMM: a row's output is the same bits whether it is computed alone, in a small batch or
/// in a prefill-sized call, at any position, and it agrees with libtorch within float32 rounding.
/// </summary>
public class InvariantGemmTests
{
    static Tensor Random(long rows, long cols, int seed) => randn([rows, cols], generator: new Generator((ulong)seed));

    static float[] Row(Tensor t, long row) => t[row].data<float>().ToArray();

    /// <summary>The documented order, element by element: c = fma(x[m, k], W[n, k], c) for k = 0..K-1 from c = 0.</summary>
    static float[] FmaChain(Tensor x, Tensor w)
    {
        var xv = x.contiguous().data<float>().ToArray();
        var wv = w.contiguous().data<float>().ToArray();
        int m = (int)x.shape[0], k = (int)x.shape[1], n = (int)w.shape[0];
        var y = new float[m * n];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++)
            {
                float sum = 0f;
                for (int i = 0; i < k; i++) sum = MathF.FusedMultiplyAdd(xv[r * k + i], wv[c * k + i], sum);
                y[r * n + c] = sum;
            }
        return y;
    }

    [Theory]
    [InlineData(37, 200)]     // N odd, K a multiple of 8 but not of 32
    [InlineData(129, 203)]    // K not a multiple of 8, one column past four panels
    [InlineData(513, 1024)]   // the benchmark model's hidden size: four K blocks, N past a panel
    [InlineData(1024, 352)]   // an expert's down projection (K past one block, not a multiple of it)
    [InlineData(5, 7)]        // N and K below one vector
    [InlineData(64, 1)]
    [InlineData(20, 600)]     // N below one panel, K past two blocks
    public void ARowIsTheSameBitsAloneInSevenAndInThreeHundredRows(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(300, k, 11);
        using var w = LinearWeight.Create(Random(n, k, 12), WeightQuantization.None);
        using var dense = w.Unpack();
        var all = w.KernelForward(x);
        Assert.Equal(new long[] { 300, n }, all.shape);
        var reference = linear(x, dense);
        double maxDiff = (reference - all).abs().max().item<float>();
        Assert.True(maxDiff < 1e-5 * Math.Sqrt(k) * 4, $"against libtorch: max diff {maxDiff}");

        // Every residue of the 6-row tiles and the edges of the row blocks of a work item are among these rows.
        int checkedRows = 0;
        foreach (int r in new[] { 0, 1, 2, 3, 5, 6, 46, 47, 48, 49, 100, 149, 150, 151, 298, 299 })
        {
            var alone = w.KernelForward(x.narrow(0, r, 1));
            Assert.Equal(Row(all, r), Row(alone, 0));
            // In a batch of 7 at every position from first to last.
            int start = Math.Max(0, Math.Min(300 - 7, r - r % 7));
            var seven = w.KernelForward(x.narrow(0, start, 7));
            Assert.Equal(Row(all, r), Row(seven, r - start));
            checkedRows++;
        }
        Assert.Equal(16, checkedRows);
        // Every row of a batch of 7 against the same rows alone.
        var batch = w.KernelForward(x.narrow(0, 40, 7));
        for (int i = 0; i < 7; i++) Assert.Equal(Row(all, 40 + i), Row(batch, i));
    }

    [Theory]
    [InlineData(37, 203)]     // N above one panel and odd, K odd
    [InlineData(20, 300)]     // N below one panel, K past one block
    public void EveryBatchSizeFromOneToThreeHundredGivesTheSameBits(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(300, k, 71);
        using var w = LinearWeight.Create(Random(n, k, 72), WeightQuantization.None);
        var all = w.KernelForward(x).data<float>().ToArray();
        for (int batch = 1; batch <= 300; batch++)
        {
            int start = batch * 37 % (300 - batch + 1);
            var part = w.KernelForward(x.narrow(0, start, batch)).data<float>().ToArray();
            Assert.Equal(all.AsSpan(start * n, batch * n).ToArray(), part);
        }
    }

    [Theory]
    [InlineData(11, 203)]
    [InlineData(9, 1024)]
    [InlineData(6, 7)]
    [InlineData(7, 17)]
    [InlineData(33, 513)]     // one output past a panel, K one past two blocks
    [InlineData(70, 256)]     // K exactly one block
    public unsafe void EveryPathGivesTheSameBitsAsTheFmaChain(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int m = 13;
        var x = Random(m, k, 61).contiguous();
        using var w = LinearWeight.Create(Random(n, k, 62), WeightQuantization.None);
        using var dense = w.Unpack();
        var paths = new List<GemmPath> { GemmPath.Scalar };
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported) paths.Add(GemmPath.Avx2);
        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) paths.Add(GemmPath.Avx512);
        Assert.Contains(InvariantGemm.BestPath, paths);
        var chain = FmaChain(x, dense);
        foreach (var path in paths)
        {
            var y = empty(m, n);
            var job = w.Job(TensorMemory.Pointer<float>(x), m, TensorMemory.Pointer<float>(y), n);
            InvariantGemm.Rows(job, 0, m, 0, n, path);
            Assert.Equal(chain, y.data<float>().ToArray());
            // Column ranges that cut panels (a work item's columns) give the same bits too.
            var cut = full(m, n, float.NaN);
            var cutJob = w.Job(TensorMemory.Pointer<float>(x), m, TensorMemory.Pointer<float>(cut), n);
            int mid = Math.Min(n, 5);
            InvariantGemm.Rows(cutJob, 0, m, 0, mid, path);
            InvariantGemm.Rows(cutJob, 0, m, mid, n, path);
            Assert.Equal(chain, cut.data<float>().ToArray());
        }
        // And those bits are the dot products (libtorch, within rounding).
        double maxDiff = (linear(x, dense) - tensor(chain, [m, n])).abs().max().item<float>();
        Assert.True(maxDiff < 1e-5 * Math.Sqrt(k) * 4, $"max diff {maxDiff}");
    }

    [Fact]
    public unsafe void PackedPanelsReplaceTheDenseWeightAndUnpackExactly()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var source = Random(45, 70, 81);
        using var w = LinearWeight.Create(source.clone(), WeightQuantization.None);
        Assert.True(w.IsFloat32);
        // Two 32-wide panels of 70 columns (the second padded with zeros); no [45, 70] tensor kept besides.
        Assert.Equal(2L * 32 * 70 * sizeof(float), w.Bytes);
        using var unpacked = w.Unpack();
        Assert.Equal(source.data<float>().ToArray(), unpacked.data<float>().ToArray());
        // Zero input rows: an empty result, nothing computed.
        Assert.Equal(new long[] { 0, 45 }, w.Forward(empty(0, 70)).shape);
        InvariantGemm.Run(w.Job(null, 0, null, 45));
        // Without the kernels the weight stays a dense tensor, and the kernels still take it on request (same bits).
        using var plain = LinearWeight.Create(source.clone(), WeightQuantization.None, useKernels: false);
        Assert.False(plain.IsFloat32);
        var x = Random(3, 70, 82);
        Assert.Equal(w.KernelForward(x).data<float>().ToArray(), plain.KernelForward(x).data<float>().ToArray());
    }

    [Fact]
    public void LinearWeightForwardRunsTheInvariantGemmForEveryBatchByDefault()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(40, 96, 21);
        using var kernels = LinearWeight.Create(Random(50, 96, 22), WeightQuantization.None);
        using var libtorch = LinearWeight.Create(kernels.Unpack(), WeightQuantization.None, useKernels: false);
        Assert.True(kernels.KernelsTake(1) && kernels.KernelsTake(512));
        Assert.False(libtorch.KernelsTake(1));
        var big = kernels.Forward(x);
        var small = kernels.Forward(x.narrow(0, 17, 1));
        Assert.Equal(Row(big, 17), Row(small, 0));
        Assert.Equal(Row(big, 17), Row(kernels.KernelForward(x), 17));
        // The libtorch-only weight computes the same values (another summation order: within rounding).
        double maxDiff = (libtorch.Forward(x) - big).abs().max().item<float>();
        Assert.True(maxDiff < 1e-4, $"max diff {maxDiff}");
    }

    [Fact]
    public void GroupedExpertsGiveATokenTheSameBitsInDecodeAndInPrefill()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int d = 72, inter = 43, tokens = 120;
        var x = Random(tokens, d, 31);
        var experts = Enumerable.Range(0, 3).Select(e => (
            GateUp: LinearWeight.Create(Random(2 * inter, d, 40 + e), WeightQuantization.None),
            Down: LinearWeight.Create(Random(d, inter, 50 + e), WeightQuantization.None))).ToArray();
        try
        {
            // Prefill: every token to expert (t mod 3) and expert ((t + 1) mod 3), weights 0.25 and 0.75.
            var prefill = zeros(tokens, d);
            var work = experts.Select((e, i) => new ExpertWork(e.GateUp, e.Down, [], [])).ToArray();
            for (int t = 0; t < tokens; t++)
            {
                work[t % 3].Tokens.Add(t); work[t % 3].Weights.Add(0.25f);
                work[(t + 1) % 3].Tokens.Add(t); work[(t + 1) % 3].Weights.Add(0.75f);
            }
            unsafe { GroupedExperts.Run(work, TensorMemory.Pointer<float>(x), d, TensorMemory.Pointer<float>(prefill)); }

            foreach (int t in new[] { 0, 1, 2, 59, 119 })
            {
                var row = x.narrow(0, t, 1).contiguous();
                var decode = zeros(1, d);
                var one = new List<ExpertWork>
                {
                    new(experts[t % 3].GateUp, experts[t % 3].Down, [0], [0.25f]),
                    new(experts[(t + 1) % 3].GateUp, experts[(t + 1) % 3].Down, [0], [0.75f]),
                };
                unsafe { GroupedExperts.Run(one, TensorMemory.Pointer<float>(row), d, TensorMemory.Pointer<float>(decode)); }
                Assert.Equal(Row(prefill, t), Row(decode, 0));
            }

            // And the values are the SwiGLU experts' (libtorch, within rounding).
            var expected = zeros(tokens, d);
            for (int t = 0; t < tokens; t++)
            {
                var xt = x.narrow(0, t, 1);
                foreach (var (e, weight) in new[] { (t % 3, 0.25f), ((t + 1) % 3, 0.75f) })
                {
                    var gateUp = linear(xt, experts[e].GateUp.Unpack()).chunk(2, -1);
                    expected[t].add_(linear(silu(gateUp[0]) * gateUp[1], experts[e].Down.Unpack())[0] * weight);
                }
            }
            double maxDiff = (expected - prefill).abs().max().item<float>();
            Assert.True(maxDiff < 1e-3, $"max diff {maxDiff}");
        }
        finally
        {
            foreach (var e in experts) { e.GateUp.Dispose(); e.Down.Dispose(); }
        }
    }
}
