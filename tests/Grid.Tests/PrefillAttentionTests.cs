using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using Grid.ModelCore.Weights;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests;

/// <summary>
/// The prefill attention kernel (issue 12): causal attention of a chunk over the expanded keys and values equals the
/// libtorch form within float32 rounding on odd shapes; a query row's output is the same bits whether its prompt is
/// prefilled in one chunk or several, and on every GemmPath; the model prefills a prompt in chunks to the same logits bits.
/// </summary>
public class PrefillAttentionTests
{
    static Tensor Random(long[] shape, int seed) => randn(shape, generator: new Generator((ulong)seed));

    static float[] Values(Tensor t) => t.contiguous().data<float>().ToArray();

    sealed record Shapes(int Heads, int Nope, int Rope, int V, int T, float Scale);

    /// <summary>Random queries for positions 0..T-1, expanded keys/values kv [T, H*(nope+v)] and cache rows [T, kvr + rope].</summary>
    static (Tensor QNope, Tensor QRope, Tensor Kv, Tensor Cache) Inputs(Shapes s, int seed)
    {
        const int kvr = 11;   // only the rope part of the cache rows is read; c_KV sits before it
        return (Random([s.T, s.Heads, s.Nope], seed), Random([s.T, s.Heads, s.Rope], seed + 1),
            Random([s.T, s.Heads * (s.Nope + s.V)], seed + 2), Random([s.T, kvr + s.Rope], seed + 3));
    }

    /// <summary>The kernel for query rows [start, start+n) (seeing keys 0..start+n-1) on <paramref name="path"/>.</summary>
    static unsafe Tensor Kernel(Shapes s, Tensor qNope, Tensor qRope, Tensor kv, Tensor cache, int start, int n, GemmPath path)
    {
        var qn = qNope.narrow(0, start, n).contiguous();
        var qr = qRope.narrow(0, start, n).contiguous();
        var output = full(n, s.Heads * s.V, float.NaN);
        long kvr = cache.shape[1] - s.Rope;
        PrefillAttention.Run(TensorMemory.Pointer<float>(qn), TensorMemory.Pointer<float>(qr), TensorMemory.Pointer<float>(kv),
            TensorMemory.Pointer<float>(cache) + kvr, cache.shape[1], n, start, s.Heads, s.Nope, s.Rope, s.V, s.Scale,
            TensorMemory.Pointer<float>(output), path);
        return output;
    }

    /// <summary>AttendNaive's libtorch form (scores, masked softmax, values) in float64.</summary>
    static Tensor Reference(Shapes s, Tensor qNope, Tensor qRope, Tensor kv, Tensor cache, int start, int n)
    {
        int t = start + n;
        var kvh = kv.narrow(0, 0, t).to(ScalarType.Float64).view(t, s.Heads, s.Nope + s.V);
        var kNope = kvh.narrow(2, 0, s.Nope).permute(1, 2, 0);                     // [H, nope, T]
        var values = kvh.narrow(2, s.Nope, s.V).transpose(0, 1);                   // [H, T, v]
        var kRope = cache.narrow(0, 0, t).narrow(1, cache.shape[1] - s.Rope, s.Rope).to(ScalarType.Float64);
        var qn = qNope.narrow(0, start, n).to(ScalarType.Float64).transpose(0, 1);
        var qr = qRope.narrow(0, start, n).to(ScalarType.Float64).transpose(0, 1);
        var scores = (qn.bmm(kNope) + qr.matmul(kRope.t())) * s.Scale;            // [H, n, T]
        var masked = arange(t).unsqueeze(0).gt(arange(start, t).unsqueeze(1)).unsqueeze(0);
        var probs = softmax(scores.masked_fill(masked, double.NegativeInfinity), -1);
        return probs.bmm(values).transpose(0, 1).reshape(n, s.Heads * s.V).to(ScalarType.Float32);
    }

    internal static IEnumerable<GemmPath> Paths() => new[] { GemmPath.Avx512, GemmPath.Avx2, GemmPath.Scalar }.Where(p => p switch
    {
        GemmPath.Avx512 => System.Runtime.Intrinsics.X86.Avx512F.IsSupported,
        GemmPath.Avx2 => System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported,
        _ => true,
    });

    public static IEnumerable<object[]> OddShapes() =>
    [
        // heads, nope, rope, v, start, n
        [3, 24, 8, 40, 0, 70],      // v not a multiple of the panel, T not a multiple of the block or a key panel
        [3, 24, 8, 40, 37, 1],      // one query after a cached prefix
        [2, 64, 32, 64, 0, 300],    // the mid model's head shapes; crosses a 256-key block
        [2, 64, 32, 64, 261, 29],   // a later chunk past the 256-key block
        [1, 5, 3, 7, 4, 13],        // below every vector width
        [2, 8, 4, 33, 0, 6],        // fewer rows than one tile, v one past a panel
    ];

    [Theory]
    [MemberData(nameof(OddShapes))]
    public void KernelMatchesLibtorchOnOddShapes(int heads, int nope, int rope, int v, int start, int n)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var s = new Shapes(heads, nope, rope, v, start + n, 1f / MathF.Sqrt(nope + rope));
        var (qNope, qRope, kv, cache) = Inputs(s, 21);
        var reference = Reference(s, qNope, qRope, kv, cache, start, n);
        foreach (var path in Paths())
        {
            var output = Kernel(s, qNope, qRope, kv, cache, start, n, path);
            double diff = (output - reference).abs().max().item<float>();
            Assert.True(diff < 2e-5, $"{path}: max diff {diff}");
        }
    }

    [Fact]
    public void ARowIsTheSameBitsInOneChunkOrSeveralAndOnEveryPath()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var s = new Shapes(3, 64, 32, 40, 300, 0.125f);
        var (qNope, qRope, kv, cache) = Inputs(s, 31);
        var whole = Values(Kernel(s, qNope, qRope, kv, cache, 0, s.T, InvariantGemm.BestPath));
        int width = s.Heads * s.V;
        // Chunks at starts not aligned to the work item's rows, the micro-kernel's tile or a key panel, and single rows.
        int[] cuts = [0, 1, 38, 41, 137, 256, 257, 299, 300];
        for (int i = 0; i + 1 < cuts.Length; i++)
        {
            int start = cuts[i], n = cuts[i + 1] - cuts[i];
            Assert.Equal(whole[(start * width)..((start + n) * width)], Values(Kernel(s, qNope, qRope, kv, cache, start, n, InvariantGemm.BestPath)));
        }
        foreach (var path in Paths())
            Assert.Equal(whole, Values(Kernel(s, qNope, qRope, kv, cache, 0, s.T, path)));
    }

    [Fact]
    public void ExpIsWithinTwoUlpOfTheCorrectlyRoundedValue()
    {
        double worst = 0;
        for (int i = 0; i <= 200_000; i++)
        {
            float x = -87f * i / 200_000;
            double exact = Math.Exp(x);
            float ulp = MathF.BitIncrement((float)exact) - (float)exact;
            worst = Math.Max(worst, Math.Abs(PrefillAttention.Exp(x) - exact) / ulp);
        }
        Assert.True(worst < 2, $"worst error {worst:F2} ulp");
        Assert.Equal(1f, PrefillAttention.Exp(0f));
    }

    [Fact]
    public void PrefillKernelMatchesLibtorchAttendNaiveThroughTheModelsAttention()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var dir = Golden.Dir("lite_f32");
        var c = ModelConfig.Load(Path.Combine(dir, "config.json"));
        using var checkpoint = Checkpoint.Open(dir);
        using var attention = new MlaAttention(new WeightLoader(checkpoint, c, ScalarType.Float32, _ => true, null), 0, 0.11);
        const int t = 45, start = 19;
        var qNope = Random([t - start, c.NumAttentionHeads, c.QkNopeHeadDim], 41);
        var qRope = Random([t - start, c.NumAttentionHeads, c.QkRopeHeadDim], 42);
        var cache = Random([t, c.KvLoraRank + c.QkRopeHeadDim], 43);
        Assert.True(attention.PrefillKernel(qNope));
        var kernel = attention.AttendNaive(qNope, qRope, cache, start);
        var libtorch = attention.AttendNaiveLibtorch(qNope, qRope, cache, start);
        double diff = (kernel - libtorch).abs().max().item<float>();
        Assert.True(diff < 1e-4, $"max diff {diff}");
    }

    [Fact]
    public void TheModelPrefillsAPromptInChunksToTheSameLogitBits()
    {
        using var noGrad = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("lite_f32"));
        var prompt = Enumerable.Range(0, 61).Select(i => (i * 37 + 5) % 500).ToArray();
        var whole = model.Cache!.Create();
        var chunked = model.Cache!.Create();
        try
        {
            float[] expected;
            using (var o = model.Forward([new SequenceChunk(whole, prompt)])) expected = o.Logits[^1].data<float>().ToArray();
            float[] actual = [];
            // Multi-token chunks only: a one-token chunk after a prefix is a decode step (the absorbed form, other rounding).
            foreach (var (first, count) in new[] { (0, 7), (7, 30), (37, 24) })
                using (var o = model.Forward([new SequenceChunk(chunked, prompt[first..(first + count)])]))
                    actual = o.Logits[^1].data<float>().ToArray();
            Assert.Equal(expected, actual);
        }
        finally
        {
            model.Cache.Release(whole);
            model.Cache.Release(chunked);
        }
    }
}
