using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.Grains.Placement;
using Grid.ModelCore.Model;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;
using Orleans.Serialization;
using Polly;
using Polly.Retry;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>How long a gateway's lease on its sequences lasts without a call (<c>Grid:Cluster:LeaseSeconds</c>).</summary>
public sealed record ShardLease(TimeSpan Lease);

/// <summary>
/// An attention shard on the grid: the contract side of model-core's <see cref="AttentionShard"/> (latent caches,
/// the walks of the current steps, sampling). All tensor work runs on the silo's inference thread. Not reentrant:
/// one call at a time; the steps of different gateways interleave between calls without touching each other.
/// A timer frees the caches of gateways whose lease expired.
/// </summary>
[AttentionPlacement]
public sealed class AttentionGrain(ModelHost host, SiloTelemetry telemetry, ShardLease lease, Serializer serializer, ILogger<AttentionGrain> logger)
    : Grain, IAttentionGrain
{
    AttentionShard? _shard;

    /// <summary>Each owner's step walked with <see cref="ExpertExchange.Shard"/>: what its pending MoE layer needs.</summary>
    readonly Dictionary<Guid, ExchangeWalk> _exchanges = new();

    /// <summary>
    /// Expert calls are pure functions of their payload, so a failed one is retried: when the silo serving a group leaves,
    /// the group's grain re-activates on a replica (or an elastic silo) and the step goes on. A group no silo can serve
    /// fails at once (the gateway reports it as unavailable), and so does a try that ran past its deadline (a silo that
    /// hangs keeps hanging); the gateway's deadline on the whole call bounds the rest.
    /// </summary>
    static readonly ResiliencePipeline GroupRetry = new ResiliencePipelineBuilder()
        .AddRetry(new RetryStrategyOptions
        {
            MaxRetryAttempts = 3,
            Delay = TimeSpan.FromMilliseconds(200),
            BackoffType = DelayBackoffType.Exponential,
            ShouldHandle = new PredicateBuilder().Handle<Exception>(e => e is not OperationCanceledException and not TimeoutException && !Unservable(e)),
        })
        .Build();

    static bool Unservable(Exception e) => NoServingSiloException.Find(e) is not null;

    int Index => (int)this.GetPrimaryKeyLong();

    AttentionShard Shard(DeepseekV2Model model) => _shard ??= new AttentionShard(model);

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        var period = TimeSpan.FromTicks(Math.Max(TimeSpan.FromMilliseconds(250).Ticks, lease.Lease.Ticks / 4));
        this.RegisterGrainTimer(ExpireLeasesAsync, new GrainTimerCreationOptions(period, period) { Interleave = false, KeepAlive = true });
        return Task.CompletedTask;
    }

    async Task ExpireLeasesAsync(CancellationToken cancellationToken)
    {
        if (!host.IsReady || _shard is null) return;
        int freed = await host.RunAsync(model =>
        {
            int n = Shard(model).ExpireLeases(DateTimeOffset.UtcNow, lease.Lease);
            if (n > 0) telemetry.Observe(model.Cache!);
            return n;
        }, cancellationToken);
        if (freed > 0)
        {
            telemetry.CachesReclaimed(freed);
            logger.LogInformation("attention shard {Shard}: freed {Count} latent caches of gateways whose lease ({Lease} s) expired",
                Index, freed, lease.Lease.TotalSeconds);
        }
    }

    public async Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default)
    {
        var progress = await host.RunAsync(model =>
        {
            var limit = start.MaxGroupsPerToken > 0 && start.MaxGroupsPerToken < start.DeviceGroups
                ? new DeviceLimit(start.DeviceGroups, start.MaxGroupsPerToken) : null;
            DropExchange(start.Owner);
            try
            {
                var chunks = start.Chunks.Select(c => c.ToChunk()).ToList();
                if (start.Exchange == ExpertExchange.Shard)
                    _exchanges[start.Owner] = new ExchangeWalk(start.StepId, start.WireDtype, start.MeasureWire, start.DeviceGroups,
                        chunks.SelectMany((c, i) => Enumerable.Repeat(i, c.Tokens.Length)).ToArray(), chunks.Count)
                    {
                        GroupCallTimeout = start.GroupCallTimeout,
                    };
                return Measure(model, start.Owner, shard =>
                {
                    long rewound = shard.Rewound;
                    var dispatch = shard.Start(chunks, limit, owner: start.Owner, stepId: start.StepId);
                    if (shard.Rewound > rewound) telemetry.CachesRewound(shard.Rewound - rewound);
                    return dispatch;
                }, start.WireDtype);
            }
            catch (StepRefusedException refused)
            {
                // Typed refusal: nothing changed; the gateway recomputes or re-queues these sequences.
                return new StepProgress(-1, null, 0, null, null, null)
                {
                    Refused = refused.Refusals.Select(r => new RefusedChunk(r.SequenceId, r.Reason == RefusalReason.NoRoom, r.Position, r.Held)).ToArray(),
                    Silo = RuntimeIdentity,
                };
            }
        }, cancellationToken);
        // The shard exchange may walk on through the step's MoE layers in this same call (no gateway round trip per layer).
        if (start.Exchange != ExpertExchange.Shard || start.WalkLayers <= 0 || progress.Finished || progress.Refused is not null || progress.Lost is not null)
            return progress;
        return await ExchangeStepAsync(start.Owner, start.StepId, progress.Layer, start.WalkLayers, cancellationToken);
    }

    public Task<StepProgress> ContinueStepAsync(Guid owner, long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            try
            {
                return Measure(model, owner, shard =>
                {
                    using var scope = NewDisposeScope();
                    return shard.Continue(routedOutput.ToTensor(host.Dtype), owner, stepId);
                }, routedOutput.Dtype);
            }
            catch (WalkLostException lost)
            {
                // Typed, as data: the gateway steps again (and recomputes what this shard no longer holds).
                return new StepProgress(-1, null, 0, null, null, null) { Lost = lost.Message, Silo = RuntimeIdentity };
            }
        }, cancellationToken);

    StepProgress Measure(DeepseekV2Model model, Guid owner, Func<AttentionShard, MoeDispatch?> advance, PayloadDtype wire)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var shard = Shard(model);
            MoeDispatch? dispatch;
            try { dispatch = advance(shard); }
            catch { DropExchange(owner); throw; }
            if (_exchanges.TryGetValue(owner, out var exchange))
            {
                if (dispatch is not null)
                {
                    // The shard keeps the layer's input: the next ExchangeStep runs its experts; the gateway gets no hidden state.
                    exchange.Prepare(dispatch, host);
                    return new StepProgress(dispatch.Layer, null, dispatch.Routing.TopK, null, null, null) { Silo = RuntimeIdentity };
                }
                var reached = exchange.Reached;
                DropExchange(owner);
                return new StepProgress(-1, null, 0, null, null, shard.Finish(owner).Select((r, i) => r.ToOutput() with
                {
                    ExpertGroups = reached[i]?.ToArray() ?? [],
                }).ToArray()) { Silo = RuntimeIdentity };
            }
            if (dispatch is not null)
                return new StepProgress(dispatch.Layer, dispatch.Input.ToPayload(wire), dispatch.Routing.TopK,
                    dispatch.Routing.ExpertIds, dispatch.Routing.Weights, null) { Silo = RuntimeIdentity };
            return new StepProgress(-1, null, 0, null, null, shard.Finish(owner).Select(r => r.ToOutput()).ToArray()) { Silo = RuntimeIdentity };
        }
        finally
        {
            telemetry.ComputeMs.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("kind", "attention"));
            telemetry.Observe(model.Cache!);
        }
    }

    public Task<int[]> AttachPrefixAsync(Guid owner, PrefixQuery[] queries, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var matched = Shard(model).AttachPrefix(queries.Select(q => new PrefixLookup(q.SequenceId, q.Tokens)).ToList(), owner);
            telemetry.Observe(model.Cache!);
            return matched;
        }, cancellationToken);

    public async Task<StepProgress> ExchangeStepAsync(Guid owner, long stepId, int layer, int layers, CancellationToken cancellationToken = default)
    {
        if (!_exchanges.TryGetValue(owner, out var walk) || walk.StepId != stepId || walk.Layer != layer)
            return LostProgress($"step {stepId} of gateway {owner} is not waiting on MoE layer {layer} on this shard (it moved, or a newer step replaced it)");
        long bytes = 0;
        for (int walked = 1; ; walked++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var progress = await ExchangeLayerAsync(owner, walk, cancellationToken);
            bytes += progress.ExchangedBytes;
            if (progress.Finished || progress.Lost is not null || (layers > 0 && walked >= layers))
                return progress with { ExchangedBytes = bytes };
        }
    }

    /// <summary>The walk's pending MoE layer: its routed experts here and on the other silos, folded in, on to the next layer.</summary>
    async Task<StepProgress> ExchangeLayerAsync(Guid owner, ExchangeWalk walk, CancellationToken cancellationToken)
    {
        // The other silos' groups are called first, so they compute while this silo's inference thread runs its own.
        var remote = walk.Remote;
        if (remote.Length == 0)
            return await host.RunAsync(model => FoldAndContinue(model, owner, walk, []), cancellationToken);
        var calls = remote.Select(r => CallGroupAsync(r.Group, r.Request, walk.GroupCallTimeout, cancellationToken)).ToArray();
        long bytes = walk.MeasureWire ? remote.Sum(r => (long)serializer.SerializeToArray(r.Request).Length) : 0;
        try
        {
            var lost = await host.RunAsync<StepProgress?>(model =>
            {
                if (!Shard(model).Walks(owner, walk.StepId)) return LostProgress($"step {walk.StepId} of gateway {owner} is no longer walking on this shard");
                walk.RunLocal(model, host, telemetry);
                return null;
            }, cancellationToken);
            var outputs = await Task.WhenAll(calls);
            if (lost is not null) return lost;
            if (walk.MeasureWire) bytes += outputs.Sum(o => (long)serializer.SerializeToArray(o).Length);
            var progress = await host.RunAsync(model => FoldAndContinue(model, owner, walk, outputs), cancellationToken);
            return progress with { ExchangedBytes = bytes };
        }
        catch
        {
            // The layer's outputs of this silo's groups are freed on the inference thread (a cancelled turn may still run there).
            await host.RunAsync(_ => { walk.DisposeLocal(); return true; }, CancellationToken.None);
            throw;
        }
    }

    /// <summary>
    /// One call to another silo's expert group, retried (see <see cref="GroupRetry"/>), each try under the gateway's
    /// per-call deadline. The retries continue on this activation's scheduler (a retry after Polly's delay on a pool
    /// thread would be a call from outside the grain: Orleans refuses it).
    /// </summary>
    async Task<TensorPayload> CallGroupAsync(int group, ExpertRequest request, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var grain = GrainFactory.GetGrain<IExpertGroupGrain>(group);
        var context = ResilienceContextPool.Shared.Get(continueOnCapturedContext: true, cancellationToken);
        try
        {
            return await GroupRetry.ExecuteAsync(async (ctx, _) =>
            {
                var ct = ctx.CancellationToken;
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
                if (timeout > TimeSpan.Zero) deadline.CancelAfter(timeout);
                try
                {
                    return await grain.ForwardAsync(request, deadline.Token).WaitAsync(deadline.Token);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    logger.LogWarning("expert group {Group}: no answer within {Seconds:F0} s; the step fails", group, timeout.TotalSeconds);
                    throw new TimeoutException($"expert group {group} did not answer within {timeout.TotalSeconds:F0} s");
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    logger.LogWarning("expert group {Group}: call failed ({Error}); retried unless it cannot be", group, e.GetType().Name + ": " + e.Message.Split('\n')[0]);
                    throw;
                }
            }, context, 0);
        }
        finally { ResilienceContextPool.Shared.Return(context); }
    }

    StepProgress LostProgress(string why) => new(-1, null, 0, null, null, null) { Lost = why, Silo = RuntimeIdentity };

    /// <summary>Sums the layer's routed experts in group order (as model-core does), folds the sum in and runs on (inference thread).</summary>
    StepProgress FoldAndContinue(DeepseekV2Model model, Guid owner, ExchangeWalk walk, TensorPayload[] remoteOutputs)
    {
        try
        {
            if (!Shard(model).Walks(owner, walk.StepId))
                return LostProgress($"step {walk.StepId} of gateway {owner} is no longer walking on this shard");
            return Measure(model, owner, shard =>
            {
                using var scope = NewDisposeScope();
                var sum = walk.Sum(model, host, telemetry, remoteOutputs);
                return shard.Continue(sum, owner, walk.StepId);
            }, walk.Wire);
        }
        catch (WalkLostException lost)
        {
            return LostProgress(lost.Message);
        }
        finally
        {
            walk.DisposeLocal();
        }
    }

    void DropExchange(Guid owner)
    {
        if (_exchanges.Remove(owner, out var walk)) walk.DisposeLocal();
    }

    public Task ReleaseAsync(Guid owner, long[] sequenceIds, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            Shard(model).Release(sequenceIds, owner);
            telemetry.Observe(model.Cache!);
            return true;
        }, CancellationToken.None);

    public Task RenewLeaseAsync(Guid owner, CancellationToken cancellationToken = default) =>
        host.RunAsync(model => { Shard(model).Touch(owner, DateTimeOffset.UtcNow); return true; }, cancellationToken);

    public Task<CacheReport> GetCacheAsync(Guid owner, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var shard = Shard(model);
            shard.Touch(owner, DateTimeOffset.UtcNow);   // the gateway's lease loop reads budgets: that renews its lease
            var stats = shard.Stats();
            var budget = shard.Budget(Index, owner);
            return new CacheReport(stats.Sequences, stats.Tokens, stats.BytesInUse, stats.BytesReserved, budget.BlockSize, budget.TotalBlocks, budget.UsedBlocks)
            {
                BytesBudget = stats.BytesBudget,
                CachedBlocks = stats.CachedBlocks,
                SharedBlocks = stats.SharedBlocks,
                PrefixQueries = stats.PrefixQueries,
                PrefixHits = stats.PrefixHits,
                Evictions = stats.Evictions,
                OwnBlocks = budget.OwnBlocks,
                Silo = RuntimeIdentity,
                Reclaimed = shard.Reclaimed,
            };
        }, cancellationToken);

    public Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default) =>
        Task.FromResult(new HostStatus(host.IsReady && host.Options.Attention, RuntimeIdentity, host.Detail));

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        // The caches live in the silo's pool: give the blocks back when this shard goes away.
        if (host.IsReady && _shard is { } shard)
            await host.RunAsync(_ => { shard.Dispose(); return true; }, CancellationToken.None);
    }
}
