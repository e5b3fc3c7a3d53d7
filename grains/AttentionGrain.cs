using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.Grains.Placement;
using Grid.ModelCore.Model;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;
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
public sealed class AttentionGrain(ModelHost host, SiloTelemetry telemetry, ShardLease lease, ILogger<AttentionGrain> logger) : Grain, IAttentionGrain
{
    AttentionShard? _shard;

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

    public Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var limit = start.MaxGroupsPerToken > 0 && start.MaxGroupsPerToken < start.DeviceGroups
                ? new DeviceLimit(start.DeviceGroups, start.MaxGroupsPerToken) : null;
            try
            {
                return Measure(model, start.Owner, shard => shard.Start(start.Chunks.Select(c => c.ToChunk()).ToList(), limit,
                    owner: start.Owner, stepId: start.StepId));
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

    public Task<StepProgress> ContinueStepAsync(Guid owner, long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            try
            {
                return Measure(model, owner, shard =>
                {
                    using var scope = NewDisposeScope();
                    return shard.Continue(routedOutput.ToTensor(), owner, stepId);
                });
            }
            catch (WalkLostException lost)
            {
                // Typed, as data: the gateway steps again (and recomputes what this shard no longer holds).
                return new StepProgress(-1, null, 0, null, null, null) { Lost = lost.Message, Silo = RuntimeIdentity };
            }
        }, cancellationToken);

    StepProgress Measure(DeepseekV2Model model, Guid owner, Func<AttentionShard, MoeDispatch?> advance)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var shard = Shard(model);
            var dispatch = advance(shard);
            if (dispatch is not null)
                return new StepProgress(dispatch.Layer, dispatch.Input.ToPayload(), dispatch.Routing.TopK,
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
