using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grid.Grains;
using Grid.Grains.Contracts;
using Grid.ModelCore.Config;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace Grid.Gateway.Orchestration;

/// <summary>The shape of the deployment the orchestrator drives (config <c>Grid:Cluster:*</c>).</summary>
public sealed record GridTopology
{
    /// <summary>Attention shards; sequences are spread over them.</summary>
    public int AttentionShards { get; init; } = 1;
    /// <summary>Expert groups the routed experts are split into (Grid:Cluster:ExpertGroups, the one key silos and gateway read).</summary>
    public int ExpertGroups { get; init; } = 1;
    /// <summary>Device-limited routing: most expert groups one token may reach (0 = no limit).</summary>
    public int MaxGroupsPerToken { get; init; }
    /// <summary>Deadline for one grain call; a dead silo fails the step after this instead of Orleans' 30 s default.</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(20);
}

/// <summary>
/// The orchestrator (the engine's executor on the grid): walks each step layer by layer across the grid. Per step every attention shard with
/// sequences in the batch embeds and runs attention up to the first MoE layer; per MoE layer the tokens of all
/// shards are bundled into one call per expert group that any token routed to, the groups' outputs are summed
/// (in group order) and handed back to the shards, which continue to the next MoE layer or the logits.
/// Calls per layer therefore depend on the number of shards and groups, never on the number of sequences. The shards
/// sample where the logits are, so a step returns tokens and logprobs, never vocabulary-sized rows.
/// </summary>
public sealed class GridStepExecutor : IStepExecutor
{
    static readonly Meter Meter = new("Grid.Orchestrator");
    static readonly Counter<long> GrainCalls = Meter.CreateCounter<long>("grid_grain_calls", description: "Grain calls made by the orchestrator, by kind");

    readonly IGrainFactory _grains;
    readonly GridTopology _topology;
    readonly ILogger _logger;
    long _stepId;

    public ModelConfig Config { get; }

    /// <summary>When set, every step's call payloads are serialized and counted (benchmarks and tests; off in serving).</summary>
    public WireMeter? Wire { get; set; }


    public GridStepExecutor(IGrainFactory grains, ModelConfig config, GridTopology topology, ILogger<GridStepExecutor> logger)
    {
        if (topology.AttentionShards < 1) throw new ArgumentException("Grid:Cluster:AttentionShards must be at least 1");
        if (config.NRoutedExperts > 0 && (topology.ExpertGroups < 1 || config.NRoutedExperts % topology.ExpertGroups != 0))
            throw new ArgumentException($"Grid:Cluster:ExpertGroups: {topology.ExpertGroups} must divide the {config.NRoutedExperts} routed experts");
        _grains = grains;
        Config = config;
        _topology = topology;
        _logger = logger;
        _stepPipeline = new ResiliencePipelineBuilder().AddTimeout(topology.CallTimeout).Build();
        _readPipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions
            {
                MaxRetryAttempts = 3,
                Delay = TimeSpan.FromMilliseconds(200),
                BackoffType = DelayBackoffType.Exponential,
                ShouldHandle = new PredicateBuilder().Handle<Exception>(e => e is not OperationCanceledException),
            })
            .AddTimeout(topology.CallTimeout)
            .Build();
    }

    readonly ResiliencePipeline _stepPipeline;
    readonly ResiliencePipeline _readPipeline;

    IAttentionGrain Shard(int i) => _grains.GetGrain<IAttentionGrain>(i);
    IExpertGroupGrain Group(int g) => _grains.GetGrain<IExpertGroupGrain>(g);

    /// <summary>
    /// Every grain call runs under a Polly timeout (a dead silo fails the step after <see cref="GridTopology.CallTimeout"/>
    /// instead of Orleans' 30 s response timeout); idempotent calls (status, cache, expert forward) are also retried.
    /// </summary>
    async Task<T> CallAsync<T>(string kind, Func<CancellationToken, Task<T>> call, CancellationToken cancellationToken, bool idempotent = false)
    {
        GrainCalls.Add(1, new KeyValuePair<string, object?>("kind", kind));
        var sw = Stopwatch.StartNew();
        try
        {
            return await (idempotent ? _readPipeline : _stepPipeline).ExecuteAsync(async ct => await call(ct), cancellationToken);
        }
        catch (TimeoutRejectedException)
        {
            throw new TimeoutException($"grain call {kind} did not answer within {_topology.CallTimeout.TotalSeconds:F0} s");
        }
        finally
        {
            _logger.LogDebug("grain call {Kind} took {Ms:F2} ms", kind, sw.Elapsed.TotalMilliseconds);
        }
    }

    public async Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
    {
        long stepId = Interlocked.Increment(ref _stepId);
        // Chunks per shard (the planner placed each sequence), remembering each chunk's place in the caller's order.
        var byShard = new SortedDictionary<int, List<int>>();
        for (int i = 0; i < chunks.Count; i++)
        {
            int s = chunks[i].Shard;
            if (s < 0 || s >= _topology.AttentionShards)
                throw new ArgumentException($"sequence {chunks[i].SequenceId}: attention shard {s} does not exist ({_topology.AttentionShards} shards)");
            (byShard.TryGetValue(s, out var list) ? list : byShard[s] = new()).Add(i);
        }
        var shards = byShard.Keys.ToArray();
        var starts = shards.Select(s => new StepStart(stepId, byShard[s].Select(i => chunks[i].ToInput()).ToArray(), _topology.ExpertGroups, _topology.MaxGroupsPerToken)).ToArray();
        var progress = await Task.WhenAll(shards.Select((s, k) => CallAsync("attention.start", ct => Shard(s).StartStepAsync(starts[k], ct), cancellationToken)));
        if (Wire is { } wire) foreach (var start in starts) wire.Chunks(start);

        while (!progress[0].Finished)
        {
            Wire?.Hidden(progress);
            var routed = await DispatchExpertsAsync(progress, cancellationToken);
            Wire?.Hidden(routed);
            progress = await Task.WhenAll(shards.Select((s, k) =>
                CallAsync("attention.continue", ct => Shard(s).ContinueStepAsync(stepId, routed[k], ct), cancellationToken)));
        }
        if (progress.Any(p => !p.Finished)) throw new InvalidOperationException("attention shards are out of step");
        if (Wire is { } meter)
        {
            meter.Results(progress);
            meter.EndStep();
        }

        // Results come back per shard in that shard's chunk order: put them back in the caller's order.
        var results = new ChunkResult[chunks.Count];
        for (int k = 0; k < shards.Length; k++)
        {
            var outputs = progress[k].Results!;
            var order = byShard[shards[k]];
            for (int j = 0; j < order.Count; j++) results[order[j]] = outputs[j].ToResult();
        }
        return results;
    }

    /// <summary>
    /// One MoE layer: bundles the routed tokens of all shards per expert group, calls each group that any token
    /// reached once, sums the groups' outputs in group order and splits the sum back per shard.
    /// </summary>
    async Task<TensorPayload[]> DispatchExpertsAsync(StepProgress[] progress, CancellationToken cancellationToken)
    {
        int layer = progress[0].Layer, topK = progress[0].TopK;
        if (progress.Any(p => p.Finished || p.Layer != layer)) throw new InvalidOperationException("attention shards are out of step");
        var input = TensorPayload.Concat(progress.Select(p => p.Input!).ToArray());
        var ids = progress.SelectMany(p => p.ExpertIds!).ToArray();
        var weights = progress.SelectMany(p => p.Weights!).ToArray();
        int rows = input.Rows, d = input.Cols;
        int groupSize = Config.NRoutedExperts / _topology.ExpertGroups;

        var rowsOfGroup = new List<int>[_topology.ExpertGroups];
        for (int r = 0; r < rows; r++)
            foreach (var g in Enumerable.Range(0, topK).Select(k => ids[r * topK + k] / groupSize).Distinct())
                (rowsOfGroup[g] ??= new()).Add(r);
        var groups = Enumerable.Range(0, _topology.ExpertGroups).Where(g => rowsOfGroup[g] is not null).ToArray();
        var outputs = await Task.WhenAll(groups.Select(g =>
        {
            var sel = rowsOfGroup[g];
            var request = new ExpertRequest(layer, input.SelectRows(sel), topK,
                sel.SelectMany(r => ids.AsSpan(r * topK, topK).ToArray()).ToArray(),
                sel.SelectMany(r => weights.AsSpan(r * topK, topK).ToArray()).ToArray());
            // Expert calls are pure functions of their payload, so they are retried: when the silo serving a group
            // leaves, the grain re-activates on a replica that declares the same group and the step goes on.
            Wire?.Hidden(request);
            return CallAsync("experts.forward", ct => Group(g).ForwardAsync(request, ct), cancellationToken, idempotent: true);
        }));
        Wire?.Hidden(outputs);

        var sum = new float[rows * d];
        for (int k = 0; k < groups.Length; k++)
        {
            var part = outputs[k].ToFloats();
            var sel = rowsOfGroup[groups[k]];
            for (int i = 0; i < sel.Count; i++)
            {
                var dst = sum.AsSpan(sel[i] * d, d);
                var src = part.AsSpan(i * d, d);
                for (int j = 0; j < d; j++) dst[j] += src[j];
            }
        }
        var all = TensorPayload.FromFloats(sum, rows, d, input.Dtype);
        var result = new TensorPayload[progress.Length];
        int at = 0;
        for (int k = 0; k < progress.Length; k++)
        {
            result[k] = all.Slice(at, progress[k].Input!.Rows);
            at += progress[k].Input!.Rows;
        }
        return result;
    }

    public async Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken)
    {
        if (sequenceIds.Count == 0) return;
        // Release is idempotent on the shard, and the gateway does not track which shard held a sequence that
        // failed mid-step: every shard is told (one call per shard, never one per sequence).
        var ids = sequenceIds.ToArray();
        await Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(s =>
            CallAsync("attention.release", async ct => { await Shard(s).ReleaseAsync(ids, ct); return true; }, cancellationToken)));
    }

    /// <summary>Every attention shard's cache report, by shard index.</summary>
    Task<CacheReport[]> CacheReportsAsync(CancellationToken cancellationToken) =>
        Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(s =>
            CallAsync("attention.cache", ct => Shard(s).GetCacheAsync(ct), cancellationToken, idempotent: true)));

    public async Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken)
    {
        var reports = await CacheReportsAsync(cancellationToken);
        return reports.Select((r, s) => new ShardBudget(s, r.BlockSize, r.TotalBlocks, r.UsedBlocks)).ToArray();
    }

    public async Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken)
    {
        var reports = await CacheReportsAsync(cancellationToken);
        return new CacheStats(reports.Sum(r => r.Sequences), reports.Sum(r => r.Tokens), reports.Sum(r => r.BytesInUse), reports.Sum(r => r.BytesReserved));
    }

    /// <summary>Status of every shard and group: ready when all have their weights loaded.</summary>
    public async Task<(bool Ready, string[] Details)> GetReadinessAsync(CancellationToken cancellationToken)
    {
        var statuses = await Task.WhenAll(
            Enumerable.Range(0, _topology.AttentionShards).Select(s => CallAsync("attention.status", ct => Shard(s).GetStatusAsync(ct), cancellationToken, idempotent: true))
            .Concat(Config.NRoutedExperts > 0 ? Enumerable.Range(0, _topology.ExpertGroups).Select(g => CallAsync("experts.status", ct => Group(g).GetStatusAsync(ct), cancellationToken, idempotent: true)) : []));
        return (statuses.All(s => s.Ready), statuses.Select(s => $"{s.Silo}: {(s.Ready ? "ready" : "not ready")} ({s.Detail})").ToArray());
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
