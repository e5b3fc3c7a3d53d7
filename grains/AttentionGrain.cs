using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.Grains.Placement;
using Grid.ModelCore.Model;
using Grid.ModelCore.Serving;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>
/// An attention shard on the grid: the contract side of model-core's <see cref="AttentionShard"/> (latent caches,
/// the walk of the current step, sampling). All tensor work runs on the silo's inference thread. Not reentrant:
/// one step at a time.
/// </summary>
[AttentionPlacement]
public sealed class AttentionGrain(ModelHost host, SiloTelemetry telemetry) : Grain, IAttentionGrain
{
    AttentionShard? _shard;
    long _stepId = -1;

    int Index => (int)this.GetPrimaryKeyLong();

    AttentionShard Shard(DeepseekV2Model model) => _shard ??= new AttentionShard(model);

    public Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var limit = start.MaxGroupsPerToken > 0 && start.MaxGroupsPerToken < start.DeviceGroups
                ? new DeviceLimit(start.DeviceGroups, start.MaxGroupsPerToken) : null;
            _stepId = start.StepId;
            return Measure(model, shard => shard.Start(start.Chunks.Select(c => c.ToChunk()).ToList(), limit));
        }, cancellationToken);

    public Task<StepProgress> ContinueStepAsync(long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            if (stepId != _stepId) throw new InvalidOperationException($"step {stepId} is not running on attention shard {Index}");
            return Measure(model, shard =>
            {
                using var scope = NewDisposeScope();
                return shard.Continue(routedOutput.ToTensor());
            });
        }, cancellationToken);

    StepProgress Measure(DeepseekV2Model model, Func<AttentionShard, MoeDispatch?> advance)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var shard = Shard(model);
            var dispatch = advance(shard);
            if (dispatch is not null)
                return new StepProgress(dispatch.Layer, dispatch.Input.ToPayload(), dispatch.Routing.TopK,
                    dispatch.Routing.ExpertIds, dispatch.Routing.Weights, null);
            return new StepProgress(-1, null, 0, null, null, shard.Finish().Select(r => r.ToOutput()).ToArray());
        }
        finally
        {
            telemetry.ComputeMs.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("kind", "attention"));
            telemetry.Observe(model.Cache!);
        }
    }

    public Task ReleaseAsync(long[] sequenceIds, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            Shard(model).Release(sequenceIds);
            telemetry.Observe(model.Cache!);
            return true;
        }, CancellationToken.None);

    public Task<CacheReport> GetCacheAsync(CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var shard = Shard(model);
            var (sequences, tokens, inUse, reserved) = shard.Stats();
            var budget = shard.Budget(Index);
            return new CacheReport(sequences, tokens, inUse, reserved, budget.BlockSize, budget.TotalBlocks, budget.UsedBlocks);
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
