using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests;

public class LatentCacheAndSamplerTests
{
    [Fact]
    public void LatentCacheBytesAreExactAndFreedOnRelease()
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"), new ModelLoadOptions { CacheBlockSize = 16, CacheInitialBlocks = 2 });
        var c = model.Config;
        var cache = model.Cache!;
        cache.AutoTrim = false;   // the pool stays as grown, to show freed blocks are reused (trimming: LatentCacheTrimTests)
        // (kv_lora_rank + qk_rope_head_dim) * layers * 4 bytes per token: (48 + 16) * 4 * 4.
        Assert.Equal((c.KvLoraRank + c.QkRopeHeadDim) * c.NumHiddenLayers * 4, cache.BytesPerToken);
        Assert.Equal(1024, cache.BytesPerToken);
        var a = cache.Create();
        var b = cache.Create();
        using (model.Forward([new SequenceChunk(a, Enumerable.Range(1, 40).ToArray()), new SequenceChunk(b, [5, 6, 7])])) { }
        Assert.Equal(3 + 1, cache.BlocksInUse);                 // ceil(40/16) + ceil(3/16); the pool grew past 2 blocks
        Assert.Equal(4 * 16 * 1024, cache.BytesInUse);
        Assert.Equal(43, cache.TokensCached);
        Assert.Equal(3 * 16 * 1024, cache.SequenceBytes(a));
        cache.Release(a);
        Assert.Equal(16 * 1024, cache.BytesInUse);
        cache.Release(b);
        cache.Release(b);
        Assert.Equal(0, cache.BytesInUse);
        Assert.Equal(0, cache.TokensCached);
        Assert.True(cache.BytesReserved >= 4 * 16 * 1024);
        // Freed blocks are reused (the pool does not grow) and hold no stale state.
        int capacity = cache.CapacityBlocks;
        var d = cache.Create();
        using var again = model.Forward([new SequenceChunk(d, [5, 6, 7])]);
        Assert.Equal(capacity, cache.CapacityBlocks);
        Assert.Equal(1, cache.BlocksInUse);
        var fresh = cache.Create();
        using var first = model.Forward([new SequenceChunk(fresh, [5, 6, 7])]);
        Assert.Equal(0.0, ModelTestKit.MaxAbsDiff(ModelTestKit.Row(again.Logits, 0), ModelTestKit.Row(first.Logits, 0)));
    }

    static float[] Logits(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
    }

    [Fact]
    public void GreedyPicksTheLowestIdOnTies()
    {
        var l = new float[] { 1, 3, 3, 2 };
        Assert.Equal(1, Sampler.Sample(l, SamplingParams.Greedy, default).Token);
    }

    [Theory]
    [InlineData(1e-310)]   // subnormal: logits / t overflow to infinity
    [InlineData(1e-300)]
    [InlineData(1e-6)]
    public void TinyTemperaturesAreGreedy(double temperature)
    {
        var l = Logits(300, 3);
        int argmax = Sampler.Argmax(l);
        Assert.All(Draws(l, new SamplingParams { Temperature = temperature }, 5, 0, 20), t => Assert.Equal(argmax, t));
    }

    static int[] Draws(float[] l, SamplingParams p, long seed, int choice, int count) =>
        Enumerable.Range(0, count).Select(i => Sampler.Sample(l, p, new DrawKey(seed, choice, i)).Token).ToArray();

    [Fact]
    public void SeededDrawsArePositionAddressed()
    {
        var l = Logits(300, 1);
        var p = new SamplingParams { Temperature = 1.0 };
        var a = Draws(l, p, 42, 0, 50);
        Assert.Equal(a, Draws(l, p, 42, 0, 50));
        // The draw of token i depends on (seed, choice, i) only: asking in any order gives the same tokens.
        Assert.Equal(a.Reverse(), Enumerable.Range(0, 50).Reverse().Select(i => Sampler.Sample(l, p, new DrawKey(42, 0, i)).Token));
        Assert.NotEqual(a, Draws(l, p, 43, 0, 50));       // another seed
        Assert.NotEqual(a, Draws(l, p, 42, 1, 50));       // another choice of the same request
        Assert.NotEqual(Draws(l, p, 42, 1, 50), Draws(l, p, 43, 0, 50));   // (seed 42, choice 1) is not (seed 43, choice 0)
    }

    [Fact]
    public void DrawKeyUniformsAreUniform()
    {
        var u = Enumerable.Range(0, 20000).Select(i => new DrawKey(7, 0, i).Uniform()).ToArray();
        Assert.All(u, x => Assert.InRange(x, 0.0, 1.0 - 1e-12));
        Assert.InRange(u.Average(), 0.49, 0.51);
        Assert.InRange(u.Count(x => x < 0.1) / 20000.0, 0.09, 0.11);
    }

    [Fact]
    public void TopKAndTopPRestrictTheCandidates()
    {
        var l = Logits(200, 2);
        var order = Enumerable.Range(0, 200).OrderByDescending(i => l[i]).ToArray();
        var seen = Draws(l, new SamplingParams { Temperature = 1.5, TopK = 3 }, 1, 0, 400).ToHashSet();
        Assert.Subset(order.Take(3).ToHashSet(), seen);
        Assert.Equal(3, seen.Count);
        Assert.All(Draws(l, new SamplingParams { Temperature = 1, TopP = 1e-6 }, 1, 0, 50), t => Assert.Equal(order[0], t));
    }

    [Fact]
    public void SamplingFollowsTheSoftmaxDistribution()
    {
        var l = new float[] { 0, (float)Math.Log(3) };   // probabilities 1/4, 3/4
        int ones = Draws(l, new SamplingParams { Temperature = 1 }, 7, 0, 20000).Count(t => t == 1);
        Assert.InRange(ones / 20000.0, 0.735, 0.765);
    }

    [Fact]
    public void LogprobsAreLogSoftmaxOfRawLogits()
    {
        var l = new float[] { 1, 2, 3 };
        var r = Sampler.Sample(l, new SamplingParams { Temperature = 0, Logprobs = 2 }, default);
        double z = Math.Log(Math.Exp(1) + Math.Exp(2) + Math.Exp(3));
        Assert.Equal(2, r.Token);
        Assert.Equal(3 - z, r.Logprob, 9);
        Assert.Equal(2, r.Top.Length);
        Assert.Equal(2, r.Top[0].Id);
        Assert.Equal(3 - z, r.Top[0].Logprob, 9);
        Assert.Equal(1, r.Top[1].Id);
        Assert.Equal(2 - z, r.Top[1].Logprob, 9);
        var scored = Sampler.Score(l, 0, 1);
        Assert.Equal(1 - z, scored.Logprob, 9);
        Assert.Equal(2, scored.Top.Single().Id);
    }
}
