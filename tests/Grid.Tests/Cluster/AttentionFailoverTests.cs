using Grid.Configuration;
using Grid.Gateway.Orchestration;
using Grid.Gateway.Scheduling;
using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;
using Orleans.TestingHost;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// Sequences survive their attention silo: two attention silos each hold one shard; the silo of one leaves in the
/// middle of generation. The engine learns it from membership, the shard re-activates on the other attention silo
/// with no caches, the lost sequences are refused there and recomputed (prompt + generated prefilled again), and every
/// stream ends with exactly the tokens of its undisturbed run. The same engine then serves on.
/// </summary>
public sealed class AttentionFailoverTests : IAsyncLifetime
{
    // silo 0 and 1: attention; silo 2: every expert group (never stopped).
    TestCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await TestSilo.StartClusterAsync<Configurator>("grid-attention-failover");

    public Task DisposeAsync() => TestSilo.StopClusterAsync(_cluster);

    sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder silo) => TestSilo.AddGridSilo(silo, 4, index => new SiloOptions { Attention = index < 2, ExpertGroups = index == 2 ? new[] { 0, 1, 2, 3 } : Array.Empty<int>() });
    }

    /// <summary>
    /// Holds the engine before a given step, counted from when the test arms it: the hold lands at a step the test
    /// chose, however fast the machine steps (a hold requested from outside the engine raced it).
    /// </summary>
    sealed class Gated(IStepExecutor inner) : IStepExecutor
    {
        int _countdown = int.MaxValue;
        readonly TaskCompletionSource _held = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly TaskCompletionSource _resume = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public ModelConfig Config => inner.Config;
        /// <summary>Holds the engine before its <paramref name="steps"/>-th step from now; the task completes once it holds.</summary>
        public Task HoldBeforeStepAsync(int steps) { Volatile.Write(ref _countdown, steps); return _held.Task; }
        public void Resume() => _resume.TrySetResult();
        /// <summary>The chunks of the step being held (set when it holds).</summary>
        public IReadOnlyList<StepChunk> HeldChunks { get; private set; } = [];
        public async Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
        {
            if (Interlocked.Decrement(ref _countdown) == 0)
            {
                HeldChunks = chunks;
                _held.TrySetResult();
                await _resume.Task.WaitAsync(cancellationToken);
            }
            return await inner.StepAsync(chunks, cancellationToken);
        }
        public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) => inner.ReleaseAsync(sequenceIds, cancellationToken);
        public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
            inner.AttachPrefixAsync(lookups, cancellationToken);
        public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => inner.GetCacheStatsAsync(cancellationToken);
        public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) => inner.GetBudgetsAsync(cancellationToken);
        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }

    static GenerationRequest Request(int[] prompt, int n, double temperature, long seed) => new()
    {
        PromptIds = prompt,
        MaxTokens = n,
        // Penalties too: they read the sequence's token history, which the recompute rebuilds on the surviving shard.
        Sampling = new SamplingParams { Temperature = temperature, Seed = seed, PresencePenalty = 0.3, FrequencyPenalty = 0.3, RepetitionPenalty = 1.1 },
    };

    /// <summary>Runs one request through the loop: its tokens and finish reason (<paramref name="onToken"/> sees the count so far).</summary>
    internal static async Task<(List<int> Tokens, string? Finish)> RunAsync(EngineLoop loop, GenerationRequest request, Action<int>? onToken = null)
    {
        var tokens = new List<int>();
        string? finish = null;
        await foreach (var e in loop.Submit(request, CancellationToken.None).ReadAllAsync())
        {
            if (e is TokenEvent t) { tokens.Add(t.Token.Token); onToken?.Invoke(tokens.Count); }
            if (e is FinishedEvent f) finish = f.Reason;
        }
        return (tokens, finish);
    }

    [Fact]
    public async Task StreamsFinishWithTheirSoloTokensWhenAnAttentionSiloLeaves()
    {
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        var grid = new GridStepExecutor(_cluster.Client, config, new GridTopology { AttentionShards = 2, ExpertGroups = 4 }, NullLogger<GridStepExecutor>.Instance);
        await using var watch = new ClusterWatch(_cluster.Client, NullLogger.Instance, TimeSpan.FromMilliseconds(200));
        grid.Watch = watch;
        await Poll.UntilAsync(async () => (await grid.GetReadinessAsync(CancellationToken.None)).Ready, "the cluster did not load its weights");
        var gated = new Gated(grid);
        await using var loop = new EngineLoop(gated, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, config.MaxPositionEmbeddings);

        var golden = Golden.Load("full_f32", "text").PromptIds;
        var requests = Enumerable.Range(0, 6).Select(i => Request(golden.Skip(i % 3).ToArray(), 40, temperature: i < 3 ? 0 : 1, seed: 11 + i)).ToArray();
        var solo = new List<List<int>>();
        foreach (var r in requests) solo.Add((await RunAsync(loop, r)).Tokens);

        // All six at once; hold the engine at its 10th step (every stream running, none near its 40 tokens), and take
        // one attention silo away.
        // The planner spreads new sequences over the hosts with the most room: wait until the budgets it reads show the
        // solo runs' caches released, so the six land on both shards.
        await Poll.UntilAsync(async () => (await grid.GetBudgetsAsync(CancellationToken.None)).All(b => b.UsedBlocks == 0), "the solo runs' caches were not released");
        var held = gated.HoldBeforeStepAsync(10);
        var tokensAtHold = new int[requests.Length];
        var runs = requests.Select((r, i) => RunAsync(loop, r, n => Volatile.Write(ref tokensAtHold[i], n))).ToArray();
        await held.WaitAsync(Poll.Deadline);
        var shardSilos = await Task.WhenAll(Enumerable.Range(0, 2).Select(s => _cluster.Client.GetGrain<IAttentionGrain>(s).GetStatusAsync()));
        var victim = _cluster.Silos.Single(s => s != _cluster.Primary! && shardSilos.Any(x => x.Silo == s.SiloAddress.ToString()));
        var victimShard = Array.FindIndex(shardSilos, x => x.Silo == victim.SiloAddress.ToString());
        var victimCache = await _cluster.Client.GetGrain<IAttentionGrain>(victimShard).GetCacheAsync(grid.Owner);
        Assert.True(victimCache.Sequences > 0, $"no sequence runs on the shard of the silo the test stops (shard {victimShard})");
        await _cluster.StopSiloAsync(victim);
        await Poll.UntilAsync(() => Task.FromResult(watch.Silos.All(s => s.Address != victim.SiloAddress.ToString() || !s.Active)), "membership did not show the silo leaving");
        Assert.All(tokensAtHold, n => Assert.InRange(n, 0, 39));   // nothing had finished when the silo left
        gated.Resume();

        var done = await Task.WhenAll(runs);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal("length", done[i].Finish);
            Assert.Equal(solo[i], done[i].Tokens);
        }
        Assert.True(loop.Recomputed > 0, "the sequences of the lost shard were recomputed");
        // Both shards now run on the surviving attention silo.
        var after = await Task.WhenAll(Enumerable.Range(0, 2).Select(s => _cluster.Client.GetGrain<IAttentionGrain>(s).GetStatusAsync()));
        Assert.All(after, s => Assert.Equal(_cluster.Primary!.SiloAddress.ToString(), s.Silo));
        Assert.Equal(solo[0], (await RunAsync(loop, requests[0])).Tokens);
    }
    [Fact]
    public async Task AShardThatRefusesPartOfAStepDoesNotCostTheOtherShardsSequences()
    {
        // A step spans both shards; each walks its part to the end and commits it. When one shard refuses a sequence,
        // the step fails as a whole after the other committed: the other's sequences are stepped again at the same
        // positions and must be rewound, not refused (refused, they are recomputed, and the two shards then refuse each
        // other's sequences step after step until the recompute limit fails them).
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        var grid = new GridStepExecutor(_cluster.Client, config, new GridTopology { AttentionShards = 2, ExpertGroups = 4 }, NullLogger<GridStepExecutor>.Instance);
        await Poll.UntilAsync(async () => (await grid.GetReadinessAsync(CancellationToken.None)).Ready, "the cluster did not load its weights");
        var gated = new Gated(grid);
        await using var loop = new EngineLoop(gated, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, config.MaxPositionEmbeddings);

        var golden = Golden.Load("full_f32", "text").PromptIds;
        var requests = Enumerable.Range(0, 6).Select(i => Request(golden.Skip(i % 3).ToArray(), 30, temperature: i < 3 ? 0 : 1, seed: 21 + i)).ToArray();
        var solo = new List<List<int>>();
        foreach (var r in requests) solo.Add((await RunAsync(loop, r)).Tokens);
        await Poll.UntilAsync(async () => (await grid.GetBudgetsAsync(CancellationToken.None)).All(b => b.UsedBlocks == 0), "the solo runs' caches were not released");

        var held = gated.HoldBeforeStepAsync(8);
        var runs = requests.Select(r => RunAsync(loop, r)).ToArray();
        await held.WaitAsync(Poll.Deadline);
        var chunks = gated.HeldChunks;
        Assert.True(chunks.Select(c => c.Shard).Distinct().Count() == 2, $"the held step runs on one shard only: {string.Join(", ", chunks.Select(c => $"{c.SequenceId}@{c.Shard}"))}");
        // Shard 0 loses one sequence's cache behind the gateway's back (as a lease expiry would): it refuses that one.
        var lost = chunks.First(c => c.Shard == 0 && c.Position > 0);
        await _cluster.Client.GetGrain<IAttentionGrain>(0).ReleaseAsync(grid.Owner, [lost.SequenceId]);
        gated.Resume();

        var done = await Task.WhenAll(runs).WaitAsync(Poll.Deadline);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal("length", done[i].Finish);
            Assert.Equal(solo[i], done[i].Tokens);
        }
        Assert.Equal(1, loop.Recomputed);   // the one lost cache, and no other sequence's
    }
}
