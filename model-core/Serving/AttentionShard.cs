using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using static TorchSharp.torch;

namespace Grid.ModelCore.Serving;

/// <summary>
/// The attention side of a step on one host: the latent caches of its sequences, the walk of the current step
/// (embedding, MLA, dense MLPs, gates, shared experts) and sampling where the logits are. The routed experts run
/// elsewhere (<see cref="LocalStepExecutor"/> runs them in process, the grid on expert-group grains): the caller
/// feeds each <see cref="MoeDispatch"/>'s routed output back through <see cref="Continue"/>. Every method runs on
/// the inference thread.
/// </summary>
public sealed class AttentionShard(DeepseekV2Model model) : IDisposable
{
    readonly Dictionary<long, LatentSequence> _sequences = new();
    LayerWalk? _walk;
    IReadOnlyList<StepChunk>? _chunks;

    LatentCache Cache => model.Cache ?? throw new InvalidOperationException("this host does not serve attention");

    /// <summary>
    /// Starts a step (abandoning an unfinished one): checks that every chunk continues its sequence's cache
    /// exactly, then runs up to the first MoE dispatch; null means the step is done (<see cref="Finish"/>).
    /// </summary>
    public MoeDispatch? Start(IReadOnlyList<StepChunk> chunks, DeviceLimit? limit = null, AttentionMode mode = AttentionMode.Auto)
    {
        Abandon();
        var cache = Cache;
        var seen = new HashSet<long>();
        foreach (var c in chunks)
        {
            c.Validate();
            if (!seen.Add(c.SequenceId)) throw new ArgumentException($"sequence {c.SequenceId} appears twice in one step");
            int length = _sequences.TryGetValue(c.SequenceId, out var held) ? held.Length : 0;
            if (c.Position != length)
                throw new InvalidOperationException($"sequence {c.SequenceId}: the step continues at position {c.Position}, but this shard holds {length} tokens of it");
        }
        var batch = chunks.Select(c =>
        {
            if (!_sequences.TryGetValue(c.SequenceId, out var seq)) _sequences[c.SequenceId] = seq = cache.Create();
            return new SequenceChunk(seq, c.Tokens, AllLogits: c.LogitRows > 1) { NoLogits = c.LogitRows == 0 };
        }).ToList();
        _walk = new LayerWalk(model, batch, mode, limit);
        _chunks = chunks;
        return Advance(null);
    }

    /// <summary>Folds in the routed experts' output [N, d] of the pending MoE layer and runs on to the next dispatch (null: done).</summary>
    public MoeDispatch? Continue(Tensor routedOutput)
    {
        if (_walk is null) throw new InvalidOperationException("no step is running on this shard");
        return Advance(routedOutput);
    }

    MoeDispatch? Advance(Tensor? routed)
    {
        try { return _walk!.Advance(routed); }
        catch { Abandon(); throw; }
    }

    /// <summary>Samples and scores from the finished step's logits: one result per chunk, in order.</summary>
    public ChunkResult[] Finish()
    {
        if (_walk is null || _chunks is null) throw new InvalidOperationException("no step is running on this shard");
        try
        {
            using var logits = _walk.TakeLogits();                      // [rows, V] float32
            var values = logits.numel() == 0 ? [] : logits.contiguous().data<float>().ToArray();
            int v = (int)logits.shape[1], row = 0;
            var results = new ChunkResult[_chunks.Count];
            for (int i = 0; i < _chunks.Count; i++)
            {
                var c = _chunks[i];
                var scored = new SampledToken[c.ScoreNext?.Length ?? 0];
                for (int r = 0; r < scored.Length; r++, row++)
                    scored[r] = Sampler.Score(values.AsSpan(row * v, v), c.ScoreNext![r], c.ScoreTop);
                SampledToken? next = null;
                if (c.Sample is { } s) next = Sampler.Sample(values.AsSpan(row++ * v, v), s.Params, s.Key);
                results[i] = new ChunkResult(next, scored);
            }
            return results;
        }
        finally { Abandon(); }
    }

    void Abandon()
    {
        _walk?.Dispose();
        _walk = null;
        _chunks = null;
    }

    /// <summary>Frees the sequences' caches; unknown ids are ignored.</summary>
    public void Release(IEnumerable<long> sequenceIds)
    {
        foreach (var id in sequenceIds)
            if (_sequences.Remove(id, out var seq)) Cache.Release(seq);
    }

    public CacheStats Stats()
    {
        var c = Cache;
        return new CacheStats(_sequences.Count, _sequences.Values.Sum(s => (long)s.Length), _sequences.Values.Sum(c.SequenceBytes), c.BytesReserved);
    }

    public ShardBudget Budget(int shard)
    {
        var c = Cache;
        return new ShardBudget(shard, c.BlockSize, c.MaxBlocks, _sequences.Values.Sum(s => s.BlockCount));
    }

    public void Dispose()
    {
        Abandon();
        if (model.Cache is { } c) foreach (var seq in _sequences.Values) c.Release(seq);
        _sequences.Clear();
    }
}
