using Grid.ModelCore.Cache;
using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests;

/// <summary>
/// The decode step's C# paths (issue 12): RMSNorm, the SwiGLU activation, absorbed decode attention over cache rows in
/// place, the in-place cache write and greedy routing each equal the libtorch form they replace (bit-exact where they
/// only move bytes, within float32 rounding where they sum), and a row's or a sequence's result is the same bits alone
/// or in a batch.
/// </summary>
public class DecodeKernelTests
{
    static Tensor Random(long[] shape, int seed) => randn(shape, generator: new Generator((ulong)seed));

    static float[] Values(Tensor t) => t.contiguous().data<float>().ToArray();

    static double MaxDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [InlineData(1024)]   // the benchmark model's hidden size
    [InlineData(203)]    // not a multiple of the vector width
    [InlineData(5)]      // below one vector
    public void RmsNormKernelMatchesLibtorchAndARowIsTheSameBitsAloneOrIn300Rows(int d)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Random([300, d], 1) * 3;
        var weight = Random([d], 2);
        using var norm = new RmsNorm(weight.clone().DetachFromDisposeScope(), 1e-6);
        Assert.True(norm.UseKernels);
        var all = norm.Forward(x);
        var reference = norm.LibtorchForward(x);
        Assert.True(MaxDiff(all, reference) < 1e-5, $"max diff {MaxDiff(all, reference)}");
        foreach (int r in new[] { 0, 7, 299 })
        {
            Assert.Equal(Values(all[r]), Values(norm.Forward(x.narrow(0, r, 1)))[..d]);
            Assert.Equal(Values(all[r]), Values(norm.Forward(x.narrow(0, Math.Min(r, 293), 7)))[((r - Math.Min(r, 293)) * d)..((r - Math.Min(r, 293) + 1) * d)]);
        }
        using var libtorchOnly = new RmsNorm(weight.clone().DetachFromDisposeScope(), 1e-6, useKernels: false);
        Assert.False(libtorchOnly.UseKernels);
        Assert.Equal(Values(reference), Values(libtorchOnly.Forward(x)));
    }

    [Fact]
    public void SwiGluKernelActivationMatchesLibtorchAndARowIsTheSameBitsAloneOrInABatch()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const int d = 72, inter = 43;
        var x = Random([120, d], 3);
        var gateUp = Random([2 * inter, d], 4);
        var down = Random([d, inter], 5);
        using var kernels = new SwiGluMlp(LinearWeight.Create(gateUp.clone().DetachFromDisposeScope(), WeightQuantization.None),
            LinearWeight.Create(down.clone().DetachFromDisposeScope(), WeightQuantization.None));
        var all = kernels.Forward(x);
        var parts = linear(x, gateUp).chunk(2, -1);
        var reference = linear(silu(parts[0]) * parts[1], down);
        Assert.True(MaxDiff(all, reference) < 1e-3, $"max diff {MaxDiff(all, reference)}");
        foreach (int r in new[] { 0, 64, 119 })
            Assert.Equal(Values(all[r]), Values(kernels.Forward(x.narrow(0, r, 1)))[..d]);
    }

    /// <summary>AttendAbsorbedBatch's libtorch form: [q_latent | q_R] against the padded rows, masked softmax, values, W_UV.</summary>
    static Tensor LibtorchAbsorbed(Tensor qNope, Tensor qRope, Tensor caches, int[] lengths, Tensor wUK, Tensor wUVt, int kvr, double scale)
    {
        long b = qNope.shape[0], tmax = caches.shape[1], h = qNope.shape[1], v = wUVt.shape[2];
        var cKV = caches.narrow(2, 0, kvr);
        var qLatent = qNope.transpose(0, 1).bmm(wUK).transpose(0, 1);
        var scores = cat([qLatent, qRope], 2).bmm(caches.transpose(1, 2)) * scale;
        var positions = arange(tmax).unsqueeze(0).expand(b, tmax);
        var maskedOut = positions.ge(tensor(lengths.Select(l => (long)l).ToArray()).unsqueeze(1)).unsqueeze(1);
        var probs = softmax(scores.masked_fill(maskedOut, float.NegativeInfinity), -1);
        return probs.bmm(cKV).transpose(0, 1).bmm(wUVt).transpose(0, 1).reshape(b, h * v);
    }

    [Fact]
    public unsafe void AbsorbedDecodeAttentionMatchesLibtorchAndASequenceIsTheSameBitsAloneOrInABatchOnEveryPath()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        // Nine heads: a tile of six and one of three; kvr 40 and v 12 cut their last panels; 37 positions cut a key
        // panel; 257 and 300 positions take a second block of 256 keys.
        const int heads = 9, nope = 24, rope = 8, kvr = 40, v = 12, tmax = 300;
        int latent = kvr + rope;
        int[] lengths = [37, 1, 300, 5, 257, 2, 9];
        int batch = lengths.Length;
        var qNope = Random([batch, heads, nope], 6);
        var qRope = Random([batch, heads, rope], 7);
        var wUK = Random([heads, nope, kvr], 8) * 0.3;
        var wUVt = Random([heads, kvr, v], 9) * 0.3;
        var packedUK = wUK.transpose(1, 2).contiguous();
        var packedUV = wUVt.transpose(1, 2).contiguous();
        using var projections = new AbsorbedProjections(TensorMemory.Pointer<float>(packedUK), TensorMemory.Pointer<float>(packedUV), heads, nope, kvr, v);
        // The pool holds the rows shuffled: sequence b's position t at rows[b * tmax + t].
        var pool = Random([batch * tmax + 3, latent], 10);
        var order = randperm(batch * tmax + 3, generator: new Generator(11)).data<long>().ToArray();
        var rows = new long[batch * tmax];
        for (int i = 0; i < rows.Length; i++) rows[i] = order[i];
        var caches = pool.index_select(0, tensor(rows)).view(batch, tmax, latent);
        const double scale = 0.17;

        Tensor Kernel(int first, int count, GemmPath path)
        {
            var output = zeros(count, heads * v);
            var qn = qNope.narrow(0, first, count).contiguous();
            var qr = qRope.narrow(0, first, count).contiguous();
            AbsorbedDecodeAttention.Run(TensorMemory.Pointer<float>(qn), TensorMemory.Pointer<float>(qr), TensorMemory.Pointer<float>(pool),
                rows[(first * tmax)..((first + count) * tmax)], lengths[first..(first + count)], tmax, projections, heads, rope, (float)scale,
                TensorMemory.Pointer<float>(output), path);
            return output;
        }

        var best = InvariantGemm.BestPath;
        var all = Kernel(0, batch, best);
        var reference = LibtorchAbsorbed(qNope, qRope, caches, lengths, wUK, wUVt, kvr, scale);
        Assert.True(MaxDiff(all, reference) < 1e-4, $"max diff {MaxDiff(all, reference)}");
        // A sequence alone or in a sub-batch, with 1-4 kernel threads: smaller batches than threads run a sequence over
        // the cores (three passes beyond one key block of 256 positions, a head split below), larger ones a sequence
        // per thread; all the same bits. (Threads only decides the split, so other tests running meanwhile are unaffected.)
        int threadsBefore = KernelParallel.Threads;
        try
        {
            foreach (var threads in new[] { 1, 2, 3, 4 })
            {
                KernelParallel.Threads = threads;
                for (int b = 0; b < batch; b++)
                    Assert.Equal(Values(all[b]), Values(Kernel(b, 1, best)[0]));
                Assert.Equal(Values(all[2..5]), Values(Kernel(2, 3, best)));
            }
        }
        finally { KernelParallel.Threads = threadsBefore; }
        foreach (var path in PrefillAttentionTests.Paths())
            Assert.Equal(Values(all), Values(Kernel(0, batch, path)));
    }

    [Fact]
    public void InPlaceCacheWriteStoresTheSameBytesAsIndexCopy()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var inPlace = new LatentCache(2, 12, ScalarType.Float32, blockSize: 4, initialBlocks: 4);
        using var libtorch = new LatentCache(2, 12, ScalarType.Float32, blockSize: 4, initialBlocks: 4);
        Assert.NotNull(inPlace.Float32Pool(1));
        long[] rowIds = [3, 0, 9, 14];
        var latents = Random([4, 12], 12);
        inPlace.Write(1, tensor(rowIds), rowIds, latents);
        libtorch.Write(1, tensor(rowIds), latents);
        var all = tensor(Enumerable.Range(0, 16).Select(i => (long)i).ToArray());
        Assert.Equal(Values(libtorch.Read(1, all)), Values(inPlace.Read(1, all)));
        Assert.Throws<ArgumentOutOfRangeException>(() => inPlace.Write(1, tensor(new long[] { 1 << 20 }), [1 << 20], latents.narrow(0, 0, 1)));
    }

    [Fact]
    public void GreedyRoutingInCSharpPicksTheExpertsAndWeightsLibtorchDoes()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("lite_f32"), "config.json"));
        foreach (var (normalise, scaling) in new[] { (false, 1.0), (true, 1.0), (false, 2.5) })
        {
            var c = config with { NormTopkProb = normalise, RoutedScalingFactor = scaling, TopkMethod = "greedy" };
            var weight = Random([c.NRoutedExperts, c.HiddenSize], 13);
            using var kernels = new MoeGate(weight.clone().DetachFromDisposeScope(), c, useKernels: true);
            using var libtorch = new MoeGate(weight.clone().DetachFromDisposeScope(), c, useKernels: false);
            var x = Random([50, c.HiddenSize], 14);
            // The gate's logits come from the batch-invariant GEMM (one fma chain per element in increasing k) in one and
            // libtorch's matmul in the other: the same routing, weights equal up to the two summation orders' rounding.
            var a = kernels.Route(x);
            var b = libtorch.Route(x);
            Assert.Equal(b.ExpertIds, a.ExpertIds);
            for (int i = 0; i < a.Weights.Length; i++) Assert.True(Math.Abs(a.Weights[i] - b.Weights[i]) < 3e-5 * Math.Max(1, Math.Abs(b.Weights[i])), $"weight {i}: {a.Weights[i]} vs {b.Weights[i]}");
        }
    }

    [Fact]
    public void ASequenceDecodesToTheSameLogitBitsAloneAndInABatchOfThree()
    {
        using var noGrad = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("lite_f32"));
        var prompts = new[] { new[] { 1, 5, 9, 200, 17, 3 }, new[] { 2, 40, 7 }, Enumerable.Range(10, 21).ToArray() };
        var seqs = prompts.Select(_ => model.Cache!.Create()).ToArray();
        var alone = prompts.Select(_ => model.Cache!.Create()).ToArray();
        var next = new int[prompts.Length];
        for (int i = 0; i < prompts.Length; i++)
        {
            using (var o = model.Forward([new SequenceChunk(seqs[i], prompts[i])])) next[i] = Sampler.Argmax(o.Logits[0].data<float>().ToArray());
            using (model.Forward([new SequenceChunk(alone[i], prompts[i])])) { }
        }
        for (int step = 0; step < 3; step++)
        {
            using var batched = model.Forward(seqs.Select((s, i) => new SequenceChunk(s, [next[i]])).ToList());
            for (int i = 0; i < prompts.Length; i++)
            {
                using var single = model.Forward([new SequenceChunk(alone[i], [next[i]])]);
                Assert.Equal(single.Logits[0].data<float>().ToArray(), batched.Logits[i].data<float>().ToArray());
            }
            for (int i = 0; i < prompts.Length; i++) next[i] = Sampler.Argmax(batched.Logits[i].data<float>().ToArray());
        }
    }

    [Theory]
    [InlineData("lite_f32")]
    [InlineData("full_f32")]
    public void RowKernelsAgreeWithLibtorchRowOpsThroughTheModel(string checkpoint)
    {
        using var noGrad = no_grad();
        using var kernels = DeepseekV2Model.Load(Golden.Dir(checkpoint));
        using var libtorch = DeepseekV2Model.Load(Golden.Dir(checkpoint), new ModelLoadOptions { RowKernels = false });
        Assert.True(kernels.RowKernels);
        Assert.False(libtorch.RowKernels);
        int[] prompt = [1, 5, 9, 200, 17, 3, 99, 42];
        var a = ModelTestKit.Greedy(kernels, prompt, 6);
        var b = ModelTestKit.Greedy(libtorch, prompt, 6);
        for (int i = 0; i < a.Count; i++)
        {
            Assert.Equal(Sampler.Argmax(b[i]), Sampler.Argmax(a[i]));
            Assert.True(ModelTestKit.MaxAbsDiff(a[i], b[i]) < 1e-3, $"step {i}: max logit diff {ModelTestKit.MaxAbsDiff(a[i], b[i])}");
        }
    }
}
