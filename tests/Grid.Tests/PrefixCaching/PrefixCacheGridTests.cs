using System.Collections.Concurrent;
using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Orchestration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Grid.Tests.Cluster;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;
using Xunit.Abstractions;

namespace Grid.Tests.PrefixCaching;

/// <summary>A TestingHost grid of its own (lite checkpoint, prefix caching on by default, blocks of 16).</summary>
public sealed class PrefixGridCluster : GridTestCluster
{
    protected override string Checkpoint => "lite_f32";
    protected override string Name => "lite-prefix";
}

/// <summary>Passes every call to the grid executor and notes which shard each chunk ran on (the tokens identify the request).</summary>
sealed class ShardRecorder(IStepExecutor inner) : IStepExecutor
{
    public readonly ConcurrentQueue<(int Shard, int Position, int[] Tokens)> Chunks = new();
    public ModelConfig Config => inner.Config;

    public Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
    {
        foreach (var c in chunks) Chunks.Enqueue((c.Shard, c.Position, c.Tokens));
        return inner.StepAsync(chunks, cancellationToken);
    }

    public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
        inner.AttachPrefixAsync(lookups, cancellationToken);
    public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) => inner.ReleaseAsync(sequenceIds, cancellationToken);
    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => inner.GetCacheStatsAsync(cancellationToken);
    public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) => inner.GetBudgetsAsync(cancellationToken);
    public ValueTask DisposeAsync() => inner.DisposeAsync();

    /// <summary>The shards that ran chunks ending in <paramref name="tail"/> (a request's own last prompt tokens).</summary>
    public int[] ShardsOf(int[] tail) => Chunks.Where(c => c.Tokens.AsSpan().EndsWith(tail)).Select(c => c.Shard).Distinct().ToArray();
}

/// <summary>Prefix caching on a real Orleans grid (TestingHost): identical outputs, and cache-aware routing across shards.</summary>
public sealed class PrefixCacheGridTests(PrefixGridCluster grid, ITestOutputHelper output) : IClassFixture<PrefixGridCluster>
{
    static EngineLoop Loop(IStepExecutor executor) => new(executor, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, 4096);

    static async Task<(SampledToken[] Tokens, FinishedEvent Finished)> RunAsync(EngineLoop loop, GenerationRequest request, CancellationToken ct = default)
    {
        var tokens = new List<SampledToken>();
        FinishedEvent? finished = null;
        await foreach (var e in loop.Submit(request, ct).ReadAllAsync(CancellationToken.None))
            if (e is TokenEvent t) tokens.Add(t.Token);
            else if (e is FinishedEvent f) finished = f;
        return (tokens.ToArray(), finished ?? new FinishedEvent("cancelled", request.PromptIds.Length, tokens.Count));
    }

    static GenerationRequest Greedy(int[] prompt, int maxTokens) => new() { PromptIds = prompt, MaxTokens = maxTokens, Sampling = SamplingParams.Greedy with { Logprobs = 5 } };

    [Theory]
    [InlineData("ids")]
    [InlineData("long")]
    public async Task ThroughTheGridCachedOutputsAreTheUncachedOnes(string prompt)
    {
        var expected = Golden.Load("lite_f32", prompt);
        var request = Greedy(expected.PromptIds, 16);
        await using var uncachedExecutor = await EngineFactory.LoadLocalAsync(Golden.Dir("lite_f32"), TorchSharp.torch.ScalarType.Float32, null,
            CancellationToken.None, new SiloOptions { PrefixCaching = false });
        await using var local = Loop(uncachedExecutor);
        var uncached = await RunAsync(local, request);
        await using var loop = Loop(grid.Executor);
        var first = await RunAsync(loop, request);
        var second = await RunAsync(loop, request);
        Assert.Equal((expected.PromptIds.Length - 1) / 16 * 16, second.Finished.CachedTokens);
        Assert.True(second.Finished.CachedTokens > 0);
        foreach (var run in new[] { first, second })
        {
            Assert.Equal(expected.GeneratedIds, run.Tokens.Select(t => t.Token));
            double worst = uncached.Tokens.Zip(run.Tokens).Max(p => Math.Max(Math.Abs(p.First.Logprob - p.Second.Logprob),
                p.First.Top.Zip(p.Second.Top).Max(q => q.First.Id == q.Second.Id ? Math.Abs(q.First.Logprob - q.Second.Logprob) : double.PositiveInfinity)));
            output.WriteLine($"{prompt}: cached {run.Finished.CachedTokens} tokens, largest logprob difference to the uncached local run {worst:E2}");
            Assert.True(worst < 1e-4, $"logprobs differ by {worst}");
        }
        var stats = await grid.Executor.GetCacheStatsAsync(CancellationToken.None);
        Assert.True(stats.PrefixHits >= second.Finished.CachedTokens);
        Assert.True(stats.CachedBlocks > 0);
    }

    [Fact]
    public async Task OnThreeShardsASecondRequestWithTheSameLongPrefixGoesWhereThePrefixIs()
    {
        await using var threeShards = new GridStepExecutor(grid.Cluster.Client, grid.Config,
            new GridTopology { AttentionShards = 3, ExpertGroups = GridTestCluster.Groups }, NullLogger<GridStepExecutor>.Instance);
        var recorder = new ShardRecorder(threeShards);
        await using var loop = Loop(recorder);
        var system = Golden.Load("lite_f32", "long").PromptIds.Select(t => (t + 1) % 500 + 3).ToArray();   // 200 tokens no other test sends

        int[] firstTail = [11, 12, 13], secondTail = [21, 22, 23], busyTail = [31, 32, 33], otherTail = [41, 42, 43];
        var first = await RunAsync(loop, Greedy([.. system, .. firstTail], 2));
        Assert.Equal(0, first.Finished.CachedTokens);
        var home = Assert.Single(recorder.ShardsOf(firstTail));

        // A long unrelated request keeps the prefix's shard busy: plain balancing would now pick another shard.
        using var stopBusy = new CancellationTokenSource();
        var busyEvents = loop.Submit(Greedy([.. Enumerable.Range(300, 40), .. busyTail], 400), stopBusy.Token);
        Assert.IsType<TokenEvent>(await busyEvents.ReadAsync());
        Assert.Equal(home, Assert.Single(recorder.ShardsOf(busyTail)));

        var second = await RunAsync(loop, Greedy([.. system, .. secondTail], 2));
        Assert.Equal(home, Assert.Single(recorder.ShardsOf(secondTail)));          // cache-aware: where the prefix is
        Assert.Equal(192, second.Finished.CachedTokens);                              // 12 full blocks of the 203-token prompt
        var other = await RunAsync(loop, Greedy([.. Enumerable.Range(440, 40), .. otherTail], 2));
        Assert.NotEqual(home, Assert.Single(recorder.ShardsOf(otherTail)));        // no prefix: the least-loaded shard
        Assert.Equal(0, other.Finished.CachedTokens);
        stopBusy.Cancel();
        await foreach (var _ in busyEvents.ReadAllAsync(CancellationToken.None)) { }
        Assert.True(loop.Router.Count(home) >= 12);
    }
}
