using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Structured;
using static TorchSharp.torch;

namespace Grid.ModelCore.Serving;

/// <summary>A sequence as a shard knows it: the gateway (lease owner) that runs it and that gateway's id for it.</summary>
public readonly record struct SequenceKey(Guid Owner, long Id)
{
    public override string ToString() => $"{Id}@{Owner.ToString()[..8]}";
}

/// <summary>Why a shard refused a chunk: <see cref="Mismatch"/> (it does not hold the sequence at the step's position) or <see cref="NoRoom"/>.</summary>
public enum RefusalReason { Mismatch, NoRoom }

/// <summary>One refused chunk: the sequence, the position the step named and the tokens the shard holds of it.</summary>
public readonly record struct ChunkRefusal(long SequenceId, RefusalReason Reason, int Position, int Held);

/// <summary>
/// A step the shard refused as a whole, changing nothing: some chunks do not continue what the shard holds
/// (a late or duplicated call, a cache lost with its silo, a lease that expired) or do not fit in its latent cache.
/// The gateway recomputes (mismatch) or re-queues (no room) the named sequences and steps the rest again.
/// </summary>
public sealed class StepRefusedException(IReadOnlyList<ChunkRefusal> refusals)
    : InvalidOperationException("the attention shard refused the step: " + string.Join("; ", refusals.Take(4).Select(Describe)) + (refusals.Count > 4 ? $"; +{refusals.Count - 4} more" : ""))
{
    public IReadOnlyList<ChunkRefusal> Refusals { get; } = refusals;

    static string Describe(ChunkRefusal r) => r.Reason == RefusalReason.NoRoom
        ? $"sequence {r.SequenceId}: no latent-cache room for positions from {r.Position}"
        : $"sequence {r.SequenceId}: the step continues at position {r.Position}, but this shard holds {r.Held} tokens of it";
}

/// <summary>
/// A continue call for a step the shard is not walking: the shard re-activated elsewhere (its silo shut down mid-step)
/// or the lease expired. Nothing changed; the gateway steps again.
/// </summary>
public sealed class WalkLostException(string message) : InvalidOperationException(message);

/// <summary>
/// The attention side of a step on one host: the latent caches of its sequences, the walks of the current steps
/// (embedding, MLA, dense MLPs, gates, shared experts) and sampling where the logits are. The routed experts run
/// elsewhere (<see cref="LocalStepExecutor"/> runs them in process, the grid on expert-group grains): the caller
/// feeds each <see cref="MoeDispatch"/>'s routed output back through <see cref="Continue"/>.
/// <para>Sequences belong to an owner (a gateway) and are keyed by (owner, id), so two gateways never share a
/// sequence; each owner has at most one step walking at a time, and owners' walks never disturb each other. An
/// owner holds a lease, renewed by every call it makes; <see cref="ExpireLeases"/> frees the caches of owners not
/// heard from within the lease (a gateway that died leaks nothing). Every method runs on the inference thread.</para>
/// </summary>
public sealed class AttentionShard(DeepseekV2Model model) : IDisposable
{
    /// <summary>The owner of single-owner shards (the local engine).</summary>
    public static readonly Guid LocalOwner = new("00000000-0000-0000-0000-000000000001");

    sealed class Walk(LayerWalk layers, IReadOnlyList<StepChunk> chunks, long stepId)
    {
        public readonly LayerWalk Layers = layers;
        public readonly IReadOnlyList<StepChunk> Chunks = chunks;
        public readonly long StepId = stepId;
    }

    readonly Dictionary<SequenceKey, LatentSequence> _sequences = new();
    readonly Dictionary<Guid, Walk> _walks = new();
    readonly Dictionary<Guid, DateTimeOffset> _leases = new();
    /// <summary>Structured-output state of constrained sequences, in step with their caches (fed in <see cref="Finish"/>).</summary>
    readonly Dictionary<SequenceKey, (ConstrainedDecoder Decoder, TokenConstraint Constraint, int Fed)> _constrained = new();

    /// <summary>The vocabulary masks are computed over: by default the tokenizer of the folder the model was loaded from.</summary>
    public TokenVocabulary? Vocabulary
    {
        get => _vocabulary ??= model.SourceDirectory is { } d ? TokenVocabulary.ForDirectory(d) : null;
        set => _vocabulary = value;
    }
    TokenVocabulary? _vocabulary;

    /// <summary>Sequences with structured output on this shard.</summary>
    public int ConstrainedCount => _constrained.Count;

    LatentCache Cache => model.Cache ?? throw new InvalidOperationException("this host does not serve attention");

    /// <summary>Sequences taken back to a chunk's position because the step ran again (<see cref="Rewinds"/>), since this shard was created.</summary>
    public long Rewound { get; private set; }

    /// <summary>Caches freed because their owner's lease expired, since this shard was created.</summary>
    public long Reclaimed { get; private set; }

    /// <summary>Renews <paramref name="owner"/>'s lease.</summary>
    public void Touch(Guid owner, DateTimeOffset now) => _leases[owner] = now;

    /// <summary>
    /// Starts <paramref name="owner"/>'s step <paramref name="stepId"/> (abandoning that owner's unfinished one):
    /// checks that every chunk continues its sequence's cache exactly and fits in the cache, then runs up to the first
    /// MoE dispatch; null means the step is done (<see cref="Finish"/>). A chunk at position 0 (re)starts its sequence
    /// from nothing; a chunk that runs again what the shard already committed rewinds the sequence to it (see <see cref="Rewinds"/>). When any chunk does not fit, <see cref="StepRefusedException"/> names them all and nothing changes.
    /// </summary>
    public MoeDispatch? Start(IReadOnlyList<StepChunk> chunks, DeviceLimit? limit = null, AttentionMode mode = AttentionMode.Auto,
        Guid? owner = null, long stepId = 0, DateTimeOffset? now = null)
    {
        var who = owner ?? LocalOwner;
        Touch(who, now ?? DateTimeOffset.UtcNow);
        Abandon(who);
        var cache = Cache;
        var seen = new HashSet<long>();
        var refusals = new List<ChunkRefusal>();
        var rewinds = new List<(LatentSequence Sequence, int Position)>();
        int freeBlocks = cache.MaxBlocks - cache.BlocksInUse;
        foreach (var c in chunks)
        {
            c.Validate();
            if (!seen.Add(c.SequenceId)) throw new ArgumentException($"sequence {c.SequenceId} appears twice in one step");
            var held = _sequences.GetValueOrDefault(new SequenceKey(who, c.SequenceId));
            int length = held?.Length ?? 0;
            bool rewind = c.Position != 0 && c.Position < length && Rewinds(who, held!, c);
            if (c.Position != 0 && c.Position != length && !rewind)
            {
                refusals.Add(new ChunkRefusal(c.SequenceId, RefusalReason.Mismatch, c.Position, length));
                continue;
            }
            if (rewind) rewinds.Add((held!, c.Position));
            // A chunk at 0 restarts the sequence: its old blocks come back first (a rewind gives back those past its position).
            int blocksNow = c.Position == 0 ? 0 : rewind ? (c.Position + cache.BlockSize - 1) / cache.BlockSize : held?.BlockCount ?? 0;
            int blocksHeld = held?.BlockCount ?? 0;
            int need = (c.Position + c.Tokens.Length + cache.BlockSize - 1) / cache.BlockSize - blocksNow;
            freeBlocks += blocksHeld - blocksNow;
            if (need > freeBlocks) refusals.Add(new ChunkRefusal(c.SequenceId, RefusalReason.NoRoom, c.Position, length));
            else freeBlocks -= need;
        }
        if (refusals.Count > 0) throw new StepRefusedException(refusals);
        foreach (var (seq, position) in rewinds) cache.Rewind(seq, position);
        Rewound += rewinds.Count;

        var batch = chunks.Select(c =>
        {
            var key = new SequenceKey(who, c.SequenceId);
            if (_sequences.TryGetValue(key, out var seq) && c.Position == 0 && seq.Length > 0)
            {
                cache.Release(seq);
                _sequences.Remove(key);
                seq = null;
            }
            if (seq is null) _sequences[key] = seq = cache.Create();
            return new SequenceChunk(seq, c.Tokens, AllLogits: c.LogitRows > 1) { NoLogits = c.LogitRows == 0 };
        }).ToList();
        _walks[who] = new Walk(new LayerWalk(model, batch, mode, limit), chunks, stepId);
        return Advance(who, null);
    }

    /// <summary>
    /// Whether a chunk that starts before the end of what the shard holds is the same work run again, so the sequence
    /// goes back to the chunk's position instead of being refused: a step of several shards fails as a whole when one
    /// of them fails (its silo died, it refused its own chunks) after this shard walked the step to the end and
    /// committed it, and the gateway then steps the same chunks again. It is the same work when the token ids the shard
    /// holds from the chunk's position on are the chunk's own (a late or stray chunk with other tokens is refused), and
    /// a sequence with structured output rewinds only a chunk that ends where the shard's tokens end (its decoder has
    /// been fed exactly those; it is not rewound).
    /// </summary>
    bool Rewinds(Guid owner, LatentSequence held, StepChunk c)
    {
        if (!Cache.CanRewind(held, c.Position)) return false;
        var tokens = held.Tokens;
        int overlap = Math.Min(tokens.Length, c.Position + c.Tokens.Length) - c.Position;
        if (!tokens.Slice(c.Position, overlap).SequenceEqual(c.Tokens.AsSpan(0, overlap))) return false;
        return !_constrained.ContainsKey(new SequenceKey(owner, c.SequenceId)) || c.Position + c.Tokens.Length == tokens.Length;
    }

    /// <summary>
    /// Starts each of the owner's new sequences from the longest cached prefix of its known tokens (prefix caching):
    /// the sequence then holds those positions, shared read-only with the sequences that computed them, and its next
    /// chunk continues at the returned length (always short of its last token, whose logits are needed). 0: nothing
    /// cached (or prefix caching off); the sequence is then created by its chunk at position 0 as usual. A sequence the
    /// shard already holds under that id is replaced.
    /// </summary>
    public int[] AttachPrefix(IReadOnlyList<PrefixLookup> lookups, Guid? owner = null, DateTimeOffset? now = null)
    {
        var who = owner ?? LocalOwner;
        Touch(who, now ?? DateTimeOffset.UtcNow);
        var cache = Cache;
        var matched = new int[lookups.Count];
        for (int i = 0; i < lookups.Count; i++)
        {
            var (id, tokens) = lookups[i];
            var key = new SequenceKey(who, id);
            if (_sequences.Remove(key, out var old)) cache.Release(old);
            _constrained.Remove(key);
            if (tokens.Length < 2 || !cache.PrefixCaching) continue;
            var seq = cache.Create();
            matched[i] = cache.AttachPrefix(seq, tokens, tokens.Length - 1);
            if (matched[i] > 0) _sequences[key] = seq;
            else cache.Release(seq);
        }
        return matched;
    }

    /// <summary>Folds in the routed experts' output [N, d] of the owner's pending MoE layer and runs on to the next dispatch (null: done).</summary>
    public MoeDispatch? Continue(Tensor routedOutput, Guid? owner = null, long? stepId = null, DateTimeOffset? now = null)
    {
        var who = owner ?? LocalOwner;
        Touch(who, now ?? DateTimeOffset.UtcNow);
        if (!_walks.TryGetValue(who, out var walk) || (stepId is { } id && walk.StepId != id))
            throw new WalkLostException($"step {stepId} of gateway {who} is not running on this shard (it moved, or a newer step replaced it)");
        return Advance(who, routedOutput);
    }

    /// <summary>Whether the owner's step <paramref name="stepId"/> is walking here (its pending MoE layer's input is alive).</summary>
    public bool Walks(Guid owner, long stepId) => _walks.TryGetValue(owner, out var walk) && walk.StepId == stepId;

    MoeDispatch? Advance(Guid owner, Tensor? routed)
    {
        try { return _walks[owner].Layers.Advance(routed); }
        catch { Abandon(owner); throw; }
    }

    /// <summary>Samples and scores from the owner's finished step's logits: one result per chunk, in order.</summary>
    public ChunkResult[] Finish(Guid? owner = null)
    {
        var who = owner ?? LocalOwner;
        if (!_walks.TryGetValue(who, out var walk)) throw new InvalidOperationException("no step is running on this shard");
        try
        {
            using var logits = walk.Layers.TakeLogits();                      // [rows, V] float32
            using var dense = logits.contiguous();   // owned: a temporary left to the finalizer could be freed mid-read
            var values = logits.numel() == 0 ? [] : dense.data<float>().ToArray();
            int v = (int)logits.shape[1], row = 0;
            var chunks = walk.Chunks;
            var results = new ChunkResult[chunks.Count];
            for (int i = 0; i < chunks.Count; i++)
            {
                var c = chunks[i];
                var scored = new SampledToken[c.ScoreNext?.Length ?? 0];
                for (int r = 0; r < scored.Length; r++, row++)
                    scored[r] = Sampler.Score(values.AsSpan(row * v, v), c.ScoreNext![r], c.ScoreTop);
                var decoder = Constrain(who, c);
                SampledToken? next = null;
                if (c.Sample is { } s)
                {
                    // Penalties read the sequence's own tokens, committed with its cache (rebuilt by every recompute).
                    var history = s.Params.NeedsHistory ? _sequences[new SequenceKey(who, c.SequenceId)].Tokens : default;
                    if (s.Params.NeedsHistory && history.Length != c.Position + c.Tokens.Length)
                        throw new InvalidOperationException($"sequence {c.SequenceId}: the shard knows {history.Length} of its {c.Position + c.Tokens.Length} token ids");
                    var logitsRow = values.AsSpan(row++ * v, v);
                    decoder?.Mask(logitsRow);   // structured output: the row is this step's own copy
                    next = Sampler.Sample(logitsRow, s.Params, s.Key, history);
                }
                results[i] = new ChunkResult(next, scored)
                {
                    LatentBytes = (_sequences.GetValueOrDefault(new SequenceKey(who, c.SequenceId))?.BlockCount ?? 0) * Cache.BytesPerBlock,
                };
            }
            return results;
        }
        finally { Abandon(who); }
    }

    /// <summary>
    /// The chunk's sequence's structured-output decoder, fed the chunk's generated tokens (those at or after the prompt's
    /// length). A chunk at position 0 (re)starts it from the chunk's constraint, so a recomputed sequence replays its tokens.
    /// </summary>
    ConstrainedDecoder? Constrain(Guid owner, StepChunk c)
    {
        var key = new SequenceKey(owner, c.SequenceId);
        if (c.Position == 0) _constrained.Remove(key);
        // The constraint comes with the sequence's first chunk: at 0, or where its cached prefix ends (prefix caching).
        if (c.Constraint is { } spec && !_constrained.ContainsKey(key))
        {
            var vocabulary = Vocabulary ?? throw new InvalidOperationException("structured output needs a byte-level BPE tokenizer.json beside the checkpoint");
            var grammar = JsonSchemaGrammar.Compile(spec.Schema, spec.Strict);
            var decoder = new ConstrainedDecoder(grammar, vocabulary, spec.MaxTokens, spec.EndTokens);
            // Generated tokens inside a cached prefix (a recomputed sequence) were not fed by any chunk: replay them.
            var history = _sequences.TryGetValue(key, out var held) ? held.Tokens : default;
            for (int p = spec.PromptLength; p < c.Position && p < history.Length; p++) decoder.Feed(history[p]);
            _constrained[key] = (decoder, spec, c.Position);
        }
        if (!_constrained.TryGetValue(key, out var entry)) return null;
        int end = c.Position + c.Tokens.Length;
        int from = Math.Max(entry.Constraint.PromptLength, Math.Max(entry.Fed, c.Position));
        for (int p = from; p < end; p++) entry.Decoder.Feed(c.Tokens[p - c.Position]);
        _constrained[key] = entry with { Fed = Math.Max(entry.Fed, end) };
        return entry.Decoder;
    }

    void Abandon(Guid owner)
    {
        if (_walks.Remove(owner, out var walk)) walk.Layers.Dispose();
    }

    /// <summary>Frees the owner's sequences' caches; unknown ids are ignored.</summary>
    public void Release(IEnumerable<long> sequenceIds, Guid? owner = null, DateTimeOffset? now = null)
    {
        var who = owner ?? LocalOwner;
        Touch(who, now ?? DateTimeOffset.UtcNow);
        foreach (var id in sequenceIds)
        {
            if (_sequences.Remove(new SequenceKey(who, id), out var seq)) Cache.Release(seq);
            _constrained.Remove(new SequenceKey(who, id));
        }
    }

    /// <summary>
    /// Frees every cache (and abandons the walk) of owners not heard from for <paramref name="lease"/>; returns how
    /// many sequences were freed.
    /// </summary>
    public int ExpireLeases(DateTimeOffset now, TimeSpan lease)
    {
        var expired = _leases.Where(l => now - l.Value > lease).Select(l => l.Key).ToHashSet();
        if (expired.Count == 0) return 0;
        foreach (var owner in expired)
        {
            _leases.Remove(owner);
            Abandon(owner);
        }
        var keys = _sequences.Keys.Where(k => expired.Contains(k.Owner)).ToList();
        foreach (var k in keys)
        {
            Cache.Release(_sequences[k]);
            _sequences.Remove(k);
            _constrained.Remove(k);
        }
        Reclaimed += keys.Count;
        return keys.Count;
    }

    /// <summary>Owners whose lease is live.</summary>
    public int Owners => _leases.Count;

    public CacheStats Stats()
    {
        var c = Cache;
        return new CacheStats(_sequences.Count, _sequences.Values.Sum(s => (long)s.Length), _sequences.Values.Sum(c.SequenceBytes), c.BytesReserved,
            c.BlocksInUse, c.MaxBlocks, c.MaxBlocks * c.BytesPerBlock)
        {
            CachedBlocks = c.CachedBlocks,
            SharedBlocks = c.SharedBlocks,
            PrefixQueries = c.PrefixQueries,
            PrefixHits = c.PrefixHits,
            Evictions = c.Evictions,
        };
    }

    /// <summary>
    /// The budget as <paramref name="owner"/> sees it: the host's whole cache (shared by every shard on the host and
    /// every owner), the blocks in use on the host, and how many of those are the owner's on this shard.
    /// </summary>
    public ShardBudget Budget(int shard, Guid? owner = null, string pool = "")
    {
        var c = Cache;
        var who = owner ?? LocalOwner;
        int own = _sequences.Where(kv => kv.Key.Owner == who).Sum(kv => kv.Value.BlockCount);
        return new ShardBudget(shard, c.BlockSize, c.MaxBlocks, c.BlocksInUse) { OwnBlocks = own, Pool = pool };
    }

    public void Dispose()
    {
        foreach (var owner in _walks.Keys.ToList()) Abandon(owner);
        if (model.Cache is { } c) foreach (var seq in _sequences.Values) c.Release(seq);
        _sequences.Clear();
        _constrained.Clear();
    }
}
