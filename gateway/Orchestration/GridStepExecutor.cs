using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grid.Grains;
using Grid.Grains.Contracts;
using Grid.ModelCore.Config;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;
using Polly;
using Polly.CircuitBreaker;
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
    /// <summary>The gateway's lease on its sequences (Grid:Cluster:LeaseSeconds): renewed at least every third of it.</summary>
    public TimeSpan Lease { get; init; } = TimeSpan.FromSeconds(20);
    /// <summary>Who carries a MoE layer's hidden states (Grid:Cluster:ExpertExchange): the shard (one round trip per layer) or the gateway (two).</summary>
    public ExpertExchange Exchange { get; init; } = ExpertExchange.Shard;
    /// <summary>Element type of hidden states on the wire (Grid:Cluster:WireDtype).</summary>
    public PayloadDtype WireDtype { get; init; } = PayloadDtype.Float32;
    /// <summary>
    /// With the shard exchange, MoE layers a shard walks per gateway call (Grid:Cluster:LayersPerCall): 0 (the default)
    /// walks the whole step in the start call; n > 0 stops at every n-th MoE layer for the gateway's next call.
    /// </summary>
    public int LayersPerCall { get; init; }
    /// <summary>
    /// How long after a silo is lost the Orleans client may still route a call through that silo's gateway (twice
    /// Grid:Cluster:GatewayListRefreshSeconds); a silo that froze (rather than died) keeps that connection open, so a
    /// step sent there would wait out its whole deadline. Within it, a step first checks the shards answer (see
    /// <c>SettleAfterLossAsync</c>) and, when they do not, waits for the rest of it.
    /// </summary>
    public TimeSpan GatewaySettle { get; init; }
}

/// <summary>
/// The orchestrator (the engine's executor on the grid): walks each step layer by layer across the grid. Per step every attention shard with
/// sequences in the batch embeds and runs attention up to the first MoE layer. Per MoE layer, with the default
/// <see cref="ExpertExchange.Shard"/> walk, the gateway makes one call per shard: the shard runs the layer's routed
/// experts (the groups its silo holds in place, one bundled call per other group reached), sums them in group order and
/// runs on to the next MoE layer. With <see cref="ExpertExchange.Gateway"/> the tokens of all shards are bundled into
/// one gateway call per expert group reached, summed here and handed back to the shards (two round trips per layer).
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
    readonly CancellationTokenSource _stop = new();
    readonly Dictionary<int, ResiliencePipeline> _groupPipelines = new();
    Task? _leaseLoop;
    volatile ShardBudget[]? _budgets;
    long _stepId;

    /// <summary>
    /// This gateway's lease id: every step, release and renewal names it, shards key this gateway's sequences and
    /// walks by it (so no other gateway can touch them), and free its caches when it stops renewing (it died).
    /// </summary>
    public Guid Owner { get; } = Guid.NewGuid();

    /// <summary>Membership events that interrupt a step waiting on a lost silo (set by the connection; null: none).</summary>
    public ClusterWatch? Watch { get; set; }

    /// <summary>How often the lease is renewed and the shards' budgets refreshed (a third of the lease, at most 1 s).</summary>
    TimeSpan RenewPeriod => TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, _topology.Lease.Ticks / 3));

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
        _readPipeline = RetryPipeline(null);
    }

    /// <summary>
    /// Idempotent calls: retried (transient failures: a silo leaving, a grain re-activating elsewhere) under one
    /// deadline shared by all attempts; an expert group's calls also pass its circuit breaker, which stops calling a
    /// group that keeps failing for a while (fails fast with 503 instead).
    /// </summary>
    ResiliencePipeline RetryPipeline(int? group)
    {
        var builder = new ResiliencePipelineBuilder()
            .AddTimeout(_topology.CallTimeout)
            .AddRetry(new RetryStrategyOptions
            {
                MaxRetryAttempts = 3,
                Delay = TimeSpan.FromMilliseconds(200),
                BackoffType = DelayBackoffType.Exponential,
                ShouldHandle = new PredicateBuilder().Handle<Exception>(e => e is not OperationCanceledException and not ModelPartUnavailableException and not BrokenCircuitException),
            });
        if (group is not null)
            builder.AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                FailureRatio = 0.5,
                MinimumThroughput = 4,
                SamplingDuration = TimeSpan.FromSeconds(30),
                BreakDuration = TimeSpan.FromSeconds(5),
                ShouldHandle = new PredicateBuilder().Handle<Exception>(e => e is TimeoutRejectedException || IsSiloLoss(e)),
            });
        return builder.AddTimeout(TimeSpan.FromTicks(_topology.CallTimeout.Ticks / 2)).Build();
    }

    ResiliencePipeline GroupPipeline(int group)
    {
        lock (_groupPipelines)
            return _groupPipelines.TryGetValue(group, out var p) ? p : _groupPipelines[group] = RetryPipeline(group);
    }

    readonly ResiliencePipeline _stepPipeline;
    readonly ResiliencePipeline _readPipeline;

    IAttentionGrain Shard(int i) => _grains.GetGrain<IAttentionGrain>(i);
    IExpertGroupGrain Group(int g) => _grains.GetGrain<IExpertGroupGrain>(g);

    /// <summary>A step call's deadline: <see cref="GridTopology.CallTimeout"/> per layer walk it covers (one: the plain step pipeline).</summary>
    ResiliencePipeline StepPipeline(int walks)
    {
        if (walks <= 1) return _stepPipeline;
        lock (_walkPipelines)
            return _walkPipelines.TryGetValue(walks, out var p) ? p
                : _walkPipelines[walks] = new ResiliencePipelineBuilder().AddTimeout(TimeSpan.FromTicks(_topology.CallTimeout.Ticks * walks)).Build();
    }

    readonly Dictionary<int, ResiliencePipeline> _walkPipelines = new();

    /// <summary>
    /// Every grain call runs under a Polly timeout (a dead silo fails the step after <see cref="GridTopology.CallTimeout"/>
    /// instead of Orleans' 30 s response timeout; a call that walks several MoE layers gets that much per layer);
    /// idempotent calls (status, cache, expert forward) are also retried.
    /// </summary>
    async Task<T> CallAsync<T>(string kind, Func<CancellationToken, Task<T>> call, CancellationToken cancellationToken, bool idempotent = false, int? group = null, int walks = 1)
    {
        GrainCalls.Add(1, new KeyValuePair<string, object?>("kind", kind));
        var sw = Stopwatch.StartNew();
        var pipeline = group is { } g ? GroupPipeline(g) : idempotent ? _readPipeline : StepPipeline(walks);
        try
        {
            // WaitAsync: a call to a silo that died returns at once when the step is interrupted, whatever Orleans does.
            return await pipeline.ExecuteAsync(async ct => await call(ct).WaitAsync(ct), cancellationToken);
        }
        catch (TimeoutRejectedException)
        {
            throw new TimeoutException($"grain call {kind} did not answer within {_topology.CallTimeout.TotalSeconds * Math.Max(1, walks):F0} s");
        }
        catch (BrokenCircuitException e)
        {
            throw new ModelPartUnavailableException($"expert group {group} is not answering (its calls keep failing; retried after a pause)", e);
        }
        catch (Exception e) when (e is not OperationCanceledException && Unservable(e) is { } part)
        {
            throw new ModelPartUnavailableException(part, e);
        }
        finally
        {
            _logger.LogDebug("grain call {Kind} took {Ms:F2} ms", kind, sw.Elapsed.TotalMilliseconds);
        }
    }

    public async Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
    {
        StartLeaseLoop();
        long stepId = Interlocked.Increment(ref _stepId);
        // A silo leaving the cluster interrupts the step at once: calls waiting on it would otherwise wait for their timeout.
        using var step = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        string? lost = null;
        void OnLost(string silo) { lost ??= silo; try { step.Cancel(); } catch (ObjectDisposedException) { } }
        if (Watch is { } watch) watch.SiloLost += OnLost;
        try
        {
            await SettleAfterLossAsync(step.Token);
            return await WalkAsync(stepId, chunks, step.Token);
        }
        catch (Exception e) when (lost is not null && !cancellationToken.IsCancellationRequested && e is not StepRefusedException)
        {
            throw new StepInterruptedException($"silo {lost} left the cluster during step {stepId}", e);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested && IsSiloLoss(e))
        {
            throw new StepInterruptedException($"step {stepId} lost a silo: {e.Message.Split('\n')[0]}", e);
        }
        finally
        {
            if (Watch is { } w) w.SiloLost -= OnLost;
        }
    }

    /// <summary>
    /// Right after a silo was lost: the step goes on at once if every attention shard answers a cheap call (the lease
    /// renewal, on the same route as the step's), or else once the client has re-read the live gateways (see
    /// <see cref="GridTopology.GatewaySettle"/>). A killed silo's connection is already reset, so the shards answer; a
    /// frozen silo's gateway swallows the call and the step waits for the re-read instead of its own deadline.
    /// </summary>
    async Task SettleAfterLossAsync(CancellationToken cancellationToken)
    {
        if (Watch?.LastLoss is not { } lost || _topology.GatewaySettle <= TimeSpan.Zero) return;
        TimeSpan Left() => _topology.GatewaySettle - (DateTimeOffset.UtcNow - lost);
        if (Left() <= TimeSpan.Zero) return;
        using var probe = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        probe.CancelAfter(Left());
        try
        {
            await Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(s => Shard(s).GetCacheAsync(Owner, probe.Token).WaitAsync(probe.Token)));
            return;
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            _logger.LogInformation("a silo was lost {Ago:F1} s ago and an attention shard did not answer ({Error}): stepping again in {Wait:F1} s, once the client has re-read the live gateways",
                (DateTimeOffset.UtcNow - lost).TotalSeconds, e.GetType().Name, Math.Max(0, Left().TotalSeconds));
        }
        if (Left() is { } rest && rest > TimeSpan.Zero) await Task.Delay(rest, cancellationToken);
    }

    async Task<ChunkResult[]> WalkAsync(long stepId, IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
    {
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
        bool exchange = _topology.Exchange == ExpertExchange.Shard;
        // With the shard exchange the start call walks the whole step (LayersPerCall 0), or stops at the first MoE layer.
        bool wholeStep = exchange && _topology.LayersPerCall <= 0;
        int moeLayers = Config.MoeLayers.Count();
        var starts = shards.Select(s => new StepStart(stepId, byShard[s].Select(i => chunks[i].ToInput()).ToArray(), _topology.ExpertGroups, _topology.MaxGroupsPerToken, Owner)
        {
            Exchange = _topology.Exchange,
            WireDtype = _topology.WireDtype,
            MeasureWire = Wire is not null,
            WalkLayers = wholeStep ? int.MaxValue : 0,
            GroupCallTimeout = _topology.CallTimeout,
        }).ToArray();
        var progress = await Task.WhenAll(shards.Select((s, k) => CallAsync("attention.start", ct => Shard(s).StartStepAsync(starts[k], ct), cancellationToken,
            walks: wholeStep ? 1 + moeLayers : 1)));
        if (Wire is { } wire) foreach (var start in starts) wire.Chunks(start);
        // A shard that refused changed nothing. The others may have walked the whole step and committed it: the same
        // chunks stepped again rewind them there (AttentionShard.Rewinds), so only the refused sequences are recomputed.
        if (progress.Any(p => p.Refused is not null))
            throw new StepRefusedException(progress.Where(p => p.Refused is not null).SelectMany(p => p.Refused!)
                .Select(r => new ChunkRefusal(r.SequenceId, r.NoRoom ? RefusalReason.NoRoom : RefusalReason.Mismatch, r.Position, r.Held)).ToList());
        if (wholeStep) ExchangedOnTheWay(progress, stepId);

        // Which chunk each routed row belongs to (a shard's rows are its chunks' tokens in chunk order, shards in
        // order), to report the expert groups each sequence reached (trace attributes).
        var rowChunk = shards.SelectMany(s => byShard[s].SelectMany(i => Enumerable.Repeat(i, chunks[i].Tokens.Length))).ToArray();
        var reached = new SortedSet<int>?[chunks.Count];
        while (!progress[0].Finished)
        {
            if (exchange)
            {
                // LayersPerCall MoE layers per gateway call: each shard runs the layers' experts itself and comes back after them.
                int layer = progress[0].Layer, layers = Math.Max(1, _topology.LayersPerCall);
                if (progress.Any(p => p.Finished || p.Layer != layer)) throw new InvalidOperationException("attention shards are out of step");
                progress = await Task.WhenAll(shards.Select(s =>
                    CallAsync("attention.exchange", ct => Shard(s).ExchangeStepAsync(Owner, stepId, layer, layers, ct), cancellationToken, walks: layers)));
                ExchangedOnTheWay(progress, stepId);
                continue;
            }
            Wire?.Hidden(progress);
            var routed = await DispatchExpertsAsync(progress, rowChunk, reached, cancellationToken);
            Wire?.Hidden(routed);
            progress = await Task.WhenAll(shards.Select((s, k) =>
                CallAsync("attention.continue", ct => Shard(s).ContinueStepAsync(Owner, stepId, routed[k], ct), cancellationToken)));
            if (progress.FirstOrDefault(p => p.Lost is not null) is { } lostWalk)
                throw new StepInterruptedException($"attention shard on {lostWalk.Silo} lost step {stepId}: {lostWalk.Lost}");
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
            for (int j = 0; j < order.Count; j++)
                results[order[j]] = outputs[j].ToResult() with { ExpertGroups = outputs[j].ExpertGroups ?? reached[order[j]]?.ToArray() ?? [] };
        }
        return results;
    }

    /// <summary>Counts what the shards' own expert-group calls moved (when metered) and stops at a shard that lost the walk.</summary>
    void ExchangedOnTheWay(StepProgress[] progress, long stepId)
    {
        Wire?.Exchanged(progress.Sum(p => p.ExchangedBytes));
        Wire?.Hidden(progress);   // the shards' answers carry no hidden state: routing-free progress, a few dozen bytes
        if (progress.FirstOrDefault(p => p.Lost is not null) is { } lost)
            throw new StepInterruptedException($"attention shard on {lost.Silo} lost step {stepId}: {lost.Lost}");
    }

    /// <summary>An Orleans failure that means a silo the call needed is gone (or unreachable): the step can be retried.</summary>
    static bool IsSiloLoss(Exception e)
    {
        for (var x = e; x is not null; x = x.InnerException)
            if (x is SiloUnavailableException or OrleansMessageRejectionException or GatewayTooBusyException
                || x.GetType().Name is "ConnectionFailedException" or "ConnectionResetException" or "ConnectionAbortedException") return true;
        return false;
    }

    /// <summary>The part of the model no silo can serve, when the failure says so (placement found no silo).</summary>
    static string? Unservable(Exception e) => NoServingSiloException.Find(e) switch
    {
        { ExpertGroup: { } group } => $"no silo in the cluster can serve expert group {group}; start a silo that declares it (or an elastic silo)",
        { } => "no silo in the cluster serves attention; start a silo with attention",
        null => null,
    };

    /// <summary>
    /// One MoE layer: bundles the routed tokens of all shards per expert group, calls each group that any token
    /// reached once, sums the groups' outputs in group order and splits the sum back per shard.
    /// </summary>
    async Task<TensorPayload[]> DispatchExpertsAsync(StepProgress[] progress, int[] rowChunk, SortedSet<int>?[] reached, CancellationToken cancellationToken)
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
        if (rowChunk.Length == rows)
            foreach (var g in groups)
                foreach (var r in rowsOfGroup[g]) (reached[rowChunk[r]] ??= new()).Add(g);
        var outputs = await Task.WhenAll(groups.Select(g =>
        {
            var sel = rowsOfGroup[g];
            var request = new ExpertRequest(layer, input.SelectRows(sel), topK,
                sel.SelectMany(r => ids.AsSpan(r * topK, topK).ToArray()).ToArray(),
                sel.SelectMany(r => weights.AsSpan(r * topK, topK).ToArray()).ToArray());
            // Expert calls are pure functions of their payload, so they are retried: when the silo serving a group
            // leaves, the grain re-activates on a replica that declares the same group and the step goes on.
            Wire?.Hidden(request);
            return CallAsync("experts.forward", ct => Group(g).ForwardAsync(request, ct), cancellationToken, idempotent: true, group: g);
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

    public async Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken)
    {
        var matched = new int[lookups.Count];
        var groups = lookups.Select((l, i) => (l, i)).GroupBy(x => x.l.Shard).ToList();
        Exception? failure = null;
        int failed = 0;
        // One call per shard that admits sequences, never one per sequence. A shard that fails (its silo just died)
        // leaves -1 for its sequences, and the others' answers stand: those shards did attach their prefixes, and a
        // gateway that dropped their answers would step them from 0 against caches that hold more (refused, again).
        await Task.WhenAll(groups.Select(async g =>
        {
            var queries = g.Select(x => new PrefixQuery(x.l.Lookup.SequenceId, x.l.Lookup.Tokens)).ToArray();
            try
            {
                var held = await CallAsync("attention.prefix", ct => Shard(g.Key).AttachPrefixAsync(Owner, queries, ct), cancellationToken);
                int k = 0;
                foreach (var x in g) matched[x.i] = held[k++];
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested)
            {
                foreach (var x in g) matched[x.i] = -1;
                Interlocked.CompareExchange(ref failure, e, null);
                Interlocked.Increment(ref failed);
            }
        }));
        if (failure is not null && failed == groups.Count) throw failure;   // no shard answered: the caller's fallback
        return matched;
    }

    public async Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken)
    {
        if (sequenceIds.Count == 0) return;
        // Release is idempotent on the shard, and the gateway does not track which shard held a sequence that
        // failed mid-step: every shard is told (one call per shard, never one per sequence).
        var ids = sequenceIds.ToArray();
        await Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(s =>
            CallAsync("attention.release", async ct => { await Shard(s).ReleaseAsync(Owner, ids, ct); return true; }, cancellationToken)));
    }

    /// <summary>Every attention shard's cache report as this gateway sees it, by shard index (renews the lease too).</summary>
    Task<CacheReport[]> CacheReportsAsync(CancellationToken cancellationToken) =>
        Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(s =>
            CallAsync("attention.cache", ct => Shard(s).GetCacheAsync(Owner, ct), cancellationToken, idempotent: true)));

    static ShardBudget[] ToBudgets(CacheReport[] reports) =>
        reports.Select((r, s) => new ShardBudget(s, r.BlockSize, r.TotalBlocks, r.UsedBlocks) { OwnBlocks = r.OwnBlocks, Pool = r.Silo }).ToArray();

    /// <summary>The shards' budgets: the latest refreshed by the lease loop (the first call asks the shards).</summary>
    public async Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken)
    {
        if (_budgets is { } known) return known;
        var budgets = ToBudgets(await CacheReportsAsync(cancellationToken));
        _budgets = budgets;
        return budgets;
    }

    public async Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken)
    {
        var reports = await CacheReportsAsync(cancellationToken);
        // Shards on one silo share its cache: count each silo's blocks once.
        var pools = reports.GroupBy(r => r.Silo).Select(g => g.First()).ToArray();
        return new CacheStats(reports.Sum(r => r.Sequences), reports.Sum(r => r.Tokens), reports.Sum(r => r.BytesInUse), pools.Sum(r => r.BytesReserved),
            pools.Sum(r => (long)r.UsedBlocks), pools.Sum(r => (long)r.TotalBlocks), pools.Sum(r => r.BytesBudget))
        {
            CachedBlocks = pools.Sum(r => r.CachedBlocks),
            SharedBlocks = pools.Sum(r => r.SharedBlocks),
            PrefixQueries = pools.Sum(r => r.PrefixQueries),
            PrefixHits = pools.Sum(r => r.PrefixHits),
            Evictions = pools.Sum(r => r.Evictions),
        };
    }

    /// <summary>
    /// Renews this gateway's lease on every shard and refreshes their budgets, in the background (never in the
    /// engine loop's path): a shard that does not answer keeps its last budget until it does.
    /// </summary>
    void StartLeaseLoop()
    {
        if (_leaseLoop is not null) return;
        lock (_groupPipelines)
        {
            if (_leaseLoop is not null) return;
            _leaseLoop = Task.Run(async () =>
            {
                // Started inside the first step's span: renewals belong to no request and are not traced.
                Activity.Current = null;
                using var untraced = OpenTelemetry.SuppressInstrumentationScope.Begin();
                var ct = _stop.Token;
                while (!ct.IsCancellationRequested)
                {
                    try
                    {
                        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
                        deadline.CancelAfter(_topology.CallTimeout);
                        var reports = await Task.WhenAll(Enumerable.Range(0, _topology.AttentionShards).Select(async s =>
                        {
                            try { return await Shard(s).GetCacheAsync(Owner, deadline.Token).WaitAsync(deadline.Token); }
                            catch (Exception e) when (!ct.IsCancellationRequested)
                            {
                                _logger.LogDebug("lease renewal on attention shard {Shard} failed: {Error}", s, e.Message);
                                return null;
                            }
                        }));
                        if (_budgets is { } old)
                            _budgets = reports.Select((r, s) => r is null ? old[s] : ToBudgets([r])[0] with { Shard = s }).ToArray();
                        else if (reports.All(r => r is not null)) _budgets = ToBudgets(reports!);
                    }
                    catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
                    catch (ObjectDisposedException) { return; }
                    catch (Exception e) { _logger.LogDebug("lease renewal failed: {Error}", e.Message); }
                    try { await Task.Delay(RenewPeriod, ct); }
                    catch (OperationCanceledException) { return; }
                }
            });
        }
    }

    /// <summary>Status of every shard and group: ready when all have their weights loaded.</summary>
    public async Task<(bool Ready, string[] Details)> GetReadinessAsync(CancellationToken cancellationToken)
    {
        var statuses = await Task.WhenAll(
            Enumerable.Range(0, _topology.AttentionShards).Select(s => CallAsync("attention.status", ct => Shard(s).GetStatusAsync(ct), cancellationToken, idempotent: true))
            .Concat(Config.NRoutedExperts > 0 ? Enumerable.Range(0, _topology.ExpertGroups).Select(g => CallAsync("experts.status", ct => Group(g).GetStatusAsync(ct), cancellationToken, idempotent: true)) : []));
        return (statuses.All(s => s.Ready), statuses.Select(s => $"{s.Silo}: {(s.Ready ? "ready" : "not ready")} ({s.Detail})").ToArray());
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_leaseLoop is { } loop) try { await loop; } catch { }
    }
}
