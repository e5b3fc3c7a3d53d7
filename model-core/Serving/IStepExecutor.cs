using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;

namespace Grid.ModelCore.Serving;

/// <summary>What to sample after a chunk's last token: the sequence's settings and where the draw sits.</summary>
public sealed record TokenSampling(SamplingParams Params, DrawKey Key);

/// <summary>
/// Structured output for one sequence: the JSON schema its generated tokens must follow (strict: every property
/// required), where the generated tokens start (the prompt's length), its token budget and the tokens that end it.
/// Sent with a sequence's first chunk (position 0); the shard keeps the grammar state with the sequence's cache and
/// rebuilds it whenever the sequence is recomputed (the generated tokens come again in its chunks).
/// </summary>
public sealed record TokenConstraint(string Schema, bool Strict, int PromptLength, int MaxTokens, int[] EndTokens);

/// <summary>
/// New tokens of one sequence for one step, at cache positions [<see cref="Position"/>, + Tokens.Length) on
/// attention shard <see cref="Shard"/>. The shard refuses a chunk whose position is not the length of the
/// sequence's cache (position 0 creates the sequence).
/// </summary>
public sealed record StepChunk(long SequenceId, int Position, int[] Tokens, int Shard = 0)
{
    /// <summary>Sample the token after the last one (the chunk reaches the end of the known tokens).</summary>
    public TokenSampling? Sample { get; init; }

    /// <summary>
    /// Prompt logprobs: row r of the chunk scores token <c>ScoreNext[r]</c> (the prompt token after it), with
    /// <see cref="ScoreTop"/> alternatives. Covers every row, or every row but the last when <see cref="Sample"/> is set.
    /// </summary>
    public int[]? ScoreNext { get; init; }

    public int ScoreTop { get; init; }

    /// <summary>Structured output, on the chunk at position 0 (the shard keeps it for the rest of the sequence).</summary>
    public TokenConstraint? Constraint { get; init; }

    /// <summary>Rows of the chunk whose logits the step needs (the last ones).</summary>
    public int LogitRows => ScoreNext is { Length: > 0 } ? Tokens.Length : Sample is not null ? 1 : 0;

    public void Validate()
    {
        if (Tokens.Length == 0) throw new ArgumentException($"sequence {SequenceId}: a chunk needs at least one token");
        if (Position < 0) throw new ArgumentException($"sequence {SequenceId}: position {Position} is negative");
        if (ScoreNext is { } s && s.Length != Tokens.Length - (Sample is null ? 0 : 1))
            throw new ArgumentException($"sequence {SequenceId}: {s.Length} prompt-logprob targets for a chunk of {Tokens.Length} tokens");
    }
}

/// <summary>
/// What a step returns for one chunk: the sampled token (when asked) and the prompt rows' logprobs; for tracing, the
/// latent-cache bytes the sequence holds after the step and the expert groups its tokens reached in it.
/// </summary>
public sealed record ChunkResult(SampledToken? Next, SampledToken[] Scored)
{
    /// <summary>Bytes of latent cache (whole blocks) the sequence holds on its shard after this step; 0 when unknown.</summary>
    public long LatentBytes { get; init; }
    /// <summary>Expert groups any of the chunk's tokens was routed to in this step (ascending); empty when unknown.</summary>
    public int[] ExpertGroups { get; init; } = [];
}

/// <summary>A new sequence's known tokens, to look up in its shard's prefix cache (<see cref="IStepExecutor.AttachPrefixAsync"/>).</summary>
public readonly record struct PrefixLookup(long SequenceId, int[] Tokens);

/// <summary>Latent cache occupancy of the hosts an executor drives.</summary>
public readonly record struct CacheStats(long Sequences, long Tokens, long BytesInUse, long BytesReserved, long BlocksInUse = 0, long BlocksBudget = 0, long BytesBudget = 0)
{
    /// <summary>Prefix-cache blocks no sequence holds (kept for later hits; free room for allocations).</summary>
    public long CachedBlocks { get; init; }
    /// <summary>Blocks held by more than one sequence.</summary>
    public long SharedBlocks { get; init; }
    /// <summary>Tokens looked up in the prefix cache / found there, since the hosts started.</summary>
    public long PrefixQueries { get; init; }
    public long PrefixHits { get; init; }
    /// <summary>Cached blocks evicted, since the hosts started.</summary>
    public long Evictions { get; init; }

    /// <summary>Blocks in use over the budget's blocks, across every host's cache counted once (vLLM's kv_cache_usage_perc, 0..1).</summary>
    public double UsageRatio => BlocksBudget > 0 ? (double)BlocksInUse / BlocksBudget : 0;
}

/// <summary>
/// An attention shard's latent-cache budget: blocks of <see cref="BlockSize"/> tokens, how many its host may hold and
/// how many are in use there (by every shard and gateway on the host), of which <see cref="OwnBlocks"/> are the asking
/// gateway's sequences on this shard. Shards on one host share its cache: they report the same <see cref="Pool"/>
/// (empty: a pool of its own).
/// </summary>
public readonly record struct ShardBudget(int Shard, int BlockSize, int TotalBlocks, int UsedBlocks)
{
    public int OwnBlocks { get; init; }
    public string Pool { get; init; } = "";
    public int FreeBlocks => TotalBlocks - UsedBlocks;
}

/// <summary>
/// Runs forward steps of the model over batches of sequences, wherever the model lives: in this process
/// (<see cref="LocalStepExecutor"/>) or across a grid of silos. Sequences are created on their first chunk
/// and keep their latent cache until <see cref="ReleaseAsync"/>. Sampling happens where the logits are: a step
/// returns tokens and logprobs, never vocabulary-sized rows.
/// </summary>
public interface IStepExecutor : IAsyncDisposable
{
    ModelConfig Config { get; }

    /// <summary>
    /// One step over the chunks; one result per chunk, in order. Throws <see cref="StepRefusedException"/> when a shard
    /// refused chunks (nothing ran for them; the rest may be stepped again) and <see cref="StepInterruptedException"/>
    /// when a host the step needed was lost (nothing was committed; step again).
    /// </summary>
    Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken);

    /// <summary>
    /// Starts new sequences on their shards from the longest cached prefix of their tokens (prefix caching); per lookup,
    /// the positions its shard now holds (0: none, or prefix caching off): its first chunk continues there; -1 where its
    /// shard did not answer while others did (it is computed from its first token; throws when no shard answered). Deliberately
    /// without a default body: a wrapper that forgot to forward it would silently turn prefix caching off.
    /// </summary>
    Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken);

    /// <summary>Frees the sequences' latent caches. Unknown ids are ignored.</summary>
    Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken);

    Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken);

    /// <summary>Every attention shard's latent-cache budget, by shard index.</summary>
    Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken);
}

/// <summary>
/// A step that could not finish because a host it needed left the cluster (or stopped answering): no cache advanced.
/// Stepping again is safe; sequences whose caches were lost with the host are then refused and recomputed.
/// </summary>
public sealed class StepInterruptedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>No host in the cluster can serve a part of the model the step needs (an expert group, attention): a 503.</summary>
public sealed class ModelPartUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
