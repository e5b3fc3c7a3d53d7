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

    [Theory]
    [InlineData(37, 200)]     // N odd, K a multiple of 8 but not of 32
    [InlineData(129, 203)]    // K not a multiple of 8
    [InlineData(513, 1024)]   // the benchmark model's hidden size, N past a work-item block
    [InlineData(1024, 352)]   // an expert's down projection
    [InlineData(5, 7)]        // K below one vector
    [InlineData(64, 1)]
    public void ARowIsTheSameBitsAloneInSevenAndInThreeHundredRows(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(300, k, 11);
        using var w = LinearWeight.Create(Random(n, k, 12), WeightQuantization.None);
        var all = w.KernelForward(x);
        Assert.Equal(new long[] { 300, n }, all.shape);
        var reference = linear(x, w.Dense!);
        double maxDiff = (reference - all).abs().max().item<float>();
        Assert.True(maxDiff < 1e-5 * Math.Sqrt(k) * 4, $"against libtorch: max diff {maxDiff}");

        // Every residue of the 3-row tiles and both block edges (48 input rows per work item) are among these rows.
        int checkedRows = 0;
        foreach (int r in new[] { 0, 1, 2, 3, 46, 47, 48, 49, 100, 151, 298, 299 })
        {
            var alone = w.KernelForward(x.narrow(0, r, 1));
            Assert.Equal(Row(all, r), Row(alone, 0));
            // In a batch of 7 at every position from first to last.
            int start = Math.Max(0, Math.Min(300 - 7, r - r % 7));
            var seven = w.KernelForward(x.narrow(0, start, 7));
            Assert.Equal(Row(all, r), Row(seven, r - start));
            checkedRows++;
        }
        Assert.Equal(12, checkedRows);
        // Every row of a batch of 7 against the same rows alone.
        var batch = w.KernelForward(x.narrow(0, 40, 7));
        for (int i = 0; i < 7; i++) Assert.Equal(Row(all, 40 + i), Row(batch, i));
    }

    [Theory]
    [InlineData(11, 203)]
    [InlineData(9, 1024)]
    [InlineData(6, 7)]
    [InlineData(7, 17)]
    public unsafe void EveryPathGivesTheSameBits(int n, int k)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int m = 13;
        var x = Random(m, k, 61).contiguous();
        using var w = LinearWeight.Create(Random(n, k, 62), WeightQuantization.None);
        var paths = new List<GemmPath> { GemmPath.Scalar };
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported) paths.Add(GemmPath.Avx2);
        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) paths.Add(GemmPath.Avx512);
        Assert.Contains(InvariantGemm.BestPath, paths);
        var results = new List<float[]>();
        foreach (var path in paths)
        {
            var y = empty(m, n);
            var job = w.Job(TensorMemory.Pointer<float>(x), m, TensorMemory.Pointer<float>(y), n);
            InvariantGemm.Rows(job, 0, m, 0, n, path);
            results.Add(y.data<float>().ToArray());
        }
        for (int i = 1; i < results.Count; i++) Assert.Equal(results[0], results[i]);
        // And those bits are the dot products (libtorch, within rounding).
        double maxDiff = (linear(x, w.Dense!) - tensor(results[0], [m, n])).abs().max().item<float>();
        Assert.True(maxDiff < 1e-5 * Math.Sqrt(k) * 4, $"max diff {maxDiff}");
    }

    [Fact]
    public void LinearWeightForwardRunsTheInvariantGemmForEveryBatchByDefault()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random(40, 96, 21);
        using var kernels = LinearWeight.Create(Random(50, 96, 22), WeightQuantization.None);
        using var libtorch = LinearWeight.Create(kernels.Dense!.clone(), WeightQuantization.None, useKernels: false);
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
                    var gateUp = linear(xt, experts[e].GateUp.Dense!).chunk(2, -1);
                    expected[t].add_(linear(silu(gateUp[0]) * gateUp[1], experts[e].Down.Dense!)[0] * weight);
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
