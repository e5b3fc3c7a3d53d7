using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.Grains.Placement;
using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>
/// An attention shard: the latent caches of its sequences and the walk of the current step. All tensor work
/// runs on the silo's inference thread; this grain only keeps the bookkeeping. Not reentrant: one step at a time.
/// </summary>
[AttentionPlacement]
public sealed class AttentionGrain(ModelHost host, SiloTelemetry telemetry) : Grain, IAttentionGrain
{
    readonly Dictionary<long, LatentSequence> _sequences = new();
    LayerWalk? _walk;
    long _stepId = -1;

    public Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            _walk?.Dispose();
            _walk = null;
            var cache = model.Cache ?? throw new InvalidOperationException("this silo does not serve attention");
            var chunks = start.Chunks.Select(c =>
            {
                if (!_sequences.TryGetValue(c.SequenceId, out var seq)) _sequences[c.SequenceId] = seq = cache.Create();
                return new SequenceChunk(seq, c.Tokens, c.AllLogits);
            }).ToList();
            var limit = start.MaxGroupsPerToken > 0 && start.MaxGroupsPerToken < start.DeviceGroups
                ? new DeviceLimit(start.DeviceGroups, start.MaxGroupsPerToken) : null;
            _walk = new LayerWalk(model, chunks, AttentionMode.Auto, limit);
            _stepId = start.StepId;
            return Advance(model, null);
        }, cancellationToken);

    public Task<StepProgress> ContinueStepAsync(long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            if (_walk is null || stepId != _stepId) throw new InvalidOperationException($"step {stepId} is not running on this shard");
            using var scope = NewDisposeScope();
            return Advance(model, routedOutput.ToTensor());
        }, cancellationToken);

    StepProgress Advance(DeepseekV2Model model, Tensor? routed)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var dispatch = _walk!.Advance(routed);
            if (dispatch is not null)
                return new StepProgress(dispatch.Layer, TensorPayload.From(dispatch.Input), dispatch.Routing.TopK,
                    dispatch.Routing.ExpertIds, dispatch.Routing.Weights, null);
            using var logits = _walk.TakeLogits();
            var done = new StepProgress(-1, null, 0, null, null, TensorPayload.From(logits));
            _walk.Dispose();
            _walk = null;
            return done;
        }
        catch
        {
            _walk?.Dispose();
            _walk = null;
            throw;
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
            foreach (var id in sequenceIds)
                if (_sequences.Remove(id, out var seq)) model.Cache!.Release(seq);
            telemetry.Observe(model.Cache!);
            return true;
        }, CancellationToken.None);

    public Task<CacheReport> GetCacheAsync(CancellationToken cancellationToken = default) =>
        host.RunAsync(model =>
        {
            var c = model.Cache!;
            long tokens = _sequences.Values.Sum(s => (long)s.Length);
            long bytes = _sequences.Values.Sum(c.SequenceBytes);
            return new CacheReport(_sequences.Count, tokens, bytes, c.BytesReserved);
        }, cancellationToken);

    public Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default) =>
        Task.FromResult(new HostStatus(host.IsReady && host.Options.Attention, RuntimeIdentity, host.Detail));

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        // The caches live in the silo's pool: give the blocks back when this shard goes away.
        if (host.IsReady)
            await host.RunAsync(model =>
            {
                _walk?.Dispose();
                foreach (var seq in _sequences.Values) model.Cache!.Release(seq);
                _sequences.Clear();
                return true;
            }, CancellationToken.None);
    }
}
