using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.ModelCore.Serving;

/// <summary>Runs the whole model in this process, on one inference thread: one attention shard and every expert group.</summary>
public sealed class LocalStepExecutor : IStepExecutor
{
    readonly InferenceThread _thread;
    readonly DeepseekV2Model _model;
    readonly AttentionShard _shard;   // touched only on the inference thread
    readonly bool _ownsThread;

    public ModelConfig Config => _model.Config;
    public DeepseekV2Model Model => _model;
    public DeviceLimit? DeviceLimit { get; init; }

    public LocalStepExecutor(DeepseekV2Model model, InferenceThread thread, bool ownsThread = false)
    {
        _model = model;
        _thread = thread;
        _ownsThread = ownsThread;
        _shard = new AttentionShard(model);
    }

    public Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken) =>
        _thread.RunAsync(() =>
        {
            if (chunks.FirstOrDefault(c => c.Shard != 0) is { } other)
                throw new ArgumentException($"sequence {other.SequenceId}: shard {other.Shard} does not exist (one local shard)");
            var dispatch = _shard.Start(chunks, DeviceLimit);
            while (dispatch is not null)
            {
                using var scope = NewDisposeScope();
                var routed = _model.Experts(dispatch.Layer, dispatch.Input, dispatch.Routing);
                dispatch = _shard.Continue(routed);
            }
            return _shard.Finish();
        }, cancellationToken);

    public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
        _thread.RunAsync(() =>
        {
            if (lookups.Any(l => l.Shard != 0)) throw new ArgumentException("only attention shard 0 exists (one local shard)");
            return _shard.AttachPrefix(lookups.Select(l => l.Lookup).ToList());
        }, cancellationToken);

    public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) =>
        _thread.RunAsync(() => _shard.Release(sequenceIds), CancellationToken.None);

    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) =>
        _thread.RunAsync(_shard.Stats, cancellationToken);

    public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) =>
        _thread.RunAsync(() => new[] { _shard.Budget(0) }, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _thread.RunAsync(() => { _shard.Dispose(); _model.Dispose(); });
        if (_ownsThread) _thread.Dispose();
    }
}
