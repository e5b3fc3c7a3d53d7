using Grid.ModelCore.Cache;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.ModelCore.Serving;

/// <summary>Runs the whole model in this process, on one inference thread.</summary>
public sealed class LocalStepExecutor : IStepExecutor
{
    readonly InferenceThread _thread;
    readonly DeepseekV2Model _model;
    readonly Dictionary<long, LatentSequence> _sequences = new();   // touched only on the inference thread
    readonly bool _ownsThread;

    public ModelConfig Config => _model.Config;
    public DeepseekV2Model Model => _model;
    public DeviceLimit? DeviceLimit { get; init; }

    public LocalStepExecutor(DeepseekV2Model model, InferenceThread thread, bool ownsThread = false)
    {
        _model = model;
        _thread = thread;
        _ownsThread = ownsThread;
    }

    public Task<float[][]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken) =>
        _thread.RunAsync(() =>
        {
            var cache = _model.Cache!;
            var batch = chunks.Select(c =>
            {
                if (!_sequences.TryGetValue(c.SequenceId, out var seq)) _sequences[c.SequenceId] = seq = cache.Create();
                return new SequenceChunk(seq, c.Tokens, c.AllLogits);
            }).ToList();
            using var output = _model.Forward(batch, AttentionMode.Auto, DeviceLimit);
            return ToRows(output.Logits);
        }, cancellationToken);

    /// <summary>Logits [rows, V] -> one float[] per row.</summary>
    public static float[][] ToRows(Tensor logits)
    {
        var all = logits.contiguous().data<float>().ToArray();
        int rows = (int)logits.shape[0], v = (int)logits.shape[1];
        var result = new float[rows][];
        for (int r = 0; r < rows; r++) result[r] = all.AsSpan(r * v, v).ToArray();
        return result;
    }

    public Task ReleaseAsync(long sequenceId, CancellationToken cancellationToken) =>
        _thread.RunAsync(() =>
        {
            if (_sequences.Remove(sequenceId, out var seq)) _model.Cache!.Release(seq);
        }, CancellationToken.None);

    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) =>
        _thread.RunAsync(() =>
        {
            var c = _model.Cache!;
            return new CacheStats(c.LiveSequences, c.TokensCached, c.BytesInUse, c.BytesReserved);
        }, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _thread.RunAsync(() => _model.Dispose());
        if (_ownsThread) _thread.Dispose();
    }
}
