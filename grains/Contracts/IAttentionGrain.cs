namespace Grid.Grains.Contracts;

/// <summary>How to sample the token after a chunk: the request's settings and where the draw sits (seed, choice, index).</summary>
[GenerateSerializer, Immutable]
public sealed record SamplingSpec(
    [property: Id(0)] double Temperature,
    [property: Id(1)] double TopP,
    [property: Id(2)] int TopK,
    [property: Id(3)] int Logprobs,
    [property: Id(4)] long Seed,
    [property: Id(5)] int Choice,
    [property: Id(6)] int Index)
{
    /// <summary>Penalties, logit_bias, min_p and the min_tokens mask; null (nothing on the wire) when the request uses none.</summary>
    [Id(7)] public LogitProcessingSpec? Processing { get; init; }
}

/// <summary>
/// A sequence's logit processing (vLLM's definitions): penalties over its own tokens (the shard keeps them with the
/// latent cache, so no token history travels), logit_bias as parallel id/value arrays, min_p, and the stop tokens
/// masked while fewer than MinTokens are generated (sent only while that holds).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record LogitProcessingSpec(
    [property: Id(0)] double PresencePenalty,
    [property: Id(1)] double FrequencyPenalty,
    [property: Id(2)] double RepetitionPenalty,
    [property: Id(3)] double MinP,
    [property: Id(4)] int MinTokens,
    [property: Id(5)] int[] StopTokenIds,
    [property: Id(6)] int[] BiasTokens,
    [property: Id(7)] float[] BiasValues);

/// <summary>
/// Structured output of a sequence (sent with its chunk at position 0): the JSON schema (strict: all properties
/// required), where generation starts, the token budget and the end tokens. The shard keeps the grammar state.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record ConstraintSpec(
    [property: Id(0)] string Schema,
    [property: Id(1)] bool Strict,
    [property: Id(2)] int PromptLength,
    [property: Id(3)] int MaxTokens,
    [property: Id(4)] int[] EndTokens);

/// <summary>
/// New tokens of one sequence in a step, at cache positions [Position, + Tokens.Length): the shard refuses a
/// chunk whose position is not its cache length. <see cref="Sample"/> asks for the next token;
/// <see cref="ScoreNext"/> for prompt logprobs (row r scores ScoreNext[r], with ScoreTop alternatives).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record ChunkInput(
    [property: Id(0)] long SequenceId,
    [property: Id(1)] int Position,
    [property: Id(2)] int[] Tokens,
    [property: Id(3)] SamplingSpec? Sample,
    [property: Id(4)] int[]? ScoreNext,
    [property: Id(5)] int ScoreTop)
{
    [Id(6)] public ConstraintSpec? Constraint { get; init; }
}

/// <summary>
/// Starts a step on an attention shard: its sequences' chunks and the deployment's device limit. <see cref="Owner"/>
/// is the gateway's lease id: the shard keys sequences and walks by it, so gateways never touch each other's.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record StepStart(
    [property: Id(0)] long StepId,
    [property: Id(1)] ChunkInput[] Chunks,
    [property: Id(2)] int DeviceGroups,
    [property: Id(3)] int MaxGroupsPerToken,
    [property: Id(4)] Guid Owner)
{
    /// <summary>Who carries the MoE layers' hidden states: the shard (one gateway call per layer) or the gateway.</summary>
    [Id(5)] public ExpertExchange Exchange { get; init; }
    /// <summary>
    /// Element type of hidden states on the wire (float32, or float16/bfloat16 for half the bytes): converted from and
    /// to the compute dtype at the edges of each call, sums taken in the compute dtype.
    /// </summary>
    [Id(6)] public PayloadDtype WireDtype { get; init; }
    /// <summary>Count the serialized bytes of the shard's expert-group calls (benchmarks and tests; off in serving).</summary>
    [Id(7)] public bool MeasureWire { get; init; }
    /// <summary>
    /// With the shard exchange: how many MoE layers the start call walks on after the first dispatch (0: it stops at the
    /// first MoE layer and the gateway calls <see cref="IAttentionGrain.ExchangeStepAsync"/>; <see cref="int.MaxValue"/>:
    /// the whole step in this one call).
    /// </summary>
    [Id(8)] public int WalkLayers { get; init; }
    /// <summary>With the shard exchange: the shard's deadline on each call to another silo's expert group (zero: none).</summary>
    [Id(9)] public TimeSpan GroupCallTimeout { get; init; }
}

/// <summary>A chunk the shard refused (the whole step then changed nothing): why, the position it named, the tokens held.</summary>
[GenerateSerializer, Immutable]
public sealed record RefusedChunk(
    [property: Id(0)] long SequenceId,
    [property: Id(1)] bool NoRoom,
    [property: Id(2)] int Position,
    [property: Id(3)] int Held);

/// <summary>A token with its logprob and the top alternatives (ids and logprobs, most likely first).</summary>
[GenerateSerializer, Immutable]
public sealed record TokenLogprobs(
    [property: Id(0)] int Token,
    [property: Id(1)] double Logprob,
    [property: Id(2)] int[] TopIds,
    [property: Id(3)] double[] TopLogprobs);

/// <summary>One chunk's outcome: the sampled token (when asked) and its prompt rows' logprobs.</summary>
[GenerateSerializer, Immutable]
public sealed record ChunkOutput(
    [property: Id(0)] TokenLogprobs? Next,
    [property: Id(1)] TokenLogprobs[] Scored)
{
    /// <summary>Latent-cache bytes (whole blocks) the sequence holds on the shard after the step.</summary>
    [Id(2)] public long LatentBytes { get; init; }
    /// <summary>Expert groups the chunk's tokens reached in the step (ascending), when the shard exchanged with them.</summary>
    [Id(3)] public int[]? ExpertGroups { get; init; }
}

/// <summary>
/// Where a shard's step stands: either a MoE layer that needs its routed experts (input rows [n, d] with their
/// top-K ids and weights), or the end of the step: per chunk the sampled token and logprobs (never logit rows), or
/// the step refused as a whole (<see cref="Refused"/>, nothing changed). <see cref="Silo"/>: where the shard runs.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record StepProgress(
    [property: Id(0)] int Layer,
    [property: Id(1)] TensorPayload? Input,
    [property: Id(2)] int TopK,
    [property: Id(3)] int[]? ExpertIds,
    [property: Id(4)] float[]? Weights,
    [property: Id(5)] ChunkOutput[]? Results)
{
    [Id(6)] public RefusedChunk[]? Refused { get; init; }
    [Id(7)] public string Silo { get; init; } = "";
    /// <summary>The shard was not walking this step (it re-activated elsewhere mid-step): nothing changed, step again.</summary>
    [Id(8)] public string? Lost { get; init; }
    /// <summary>Serialized bytes of the shard's own expert-group calls for this progress (requests and replies; when asked).</summary>
    [Id(9)] public long ExchangedBytes { get; init; }
    public bool Finished => Results is not null;
}

/// <summary>A new sequence's known tokens, looked up in the shard's prefix cache (<see cref="IAttentionGrain.AttachPrefixAsync"/>).</summary>
[GenerateSerializer, Immutable]
public sealed record PrefixQuery(
    [property: Id(0)] long SequenceId,
    [property: Id(1)] int[] Tokens);

/// <summary>A shard's latent cache: what it holds and its budget in blocks.</summary>
[GenerateSerializer, Immutable]
public sealed record CacheReport(
    [property: Id(0)] long Sequences,
    [property: Id(1)] long Tokens,
    [property: Id(2)] long BytesInUse,
    [property: Id(3)] long BytesReserved,
    [property: Id(4)] int BlockSize,
    [property: Id(5)] int TotalBlocks,
    [property: Id(6)] int UsedBlocks)
{
    /// <summary>Blocks of the asking gateway's sequences on this shard.</summary>
    [Id(7)] public int OwnBlocks { get; init; }
    /// <summary>The silo the shard runs on (shards on one silo share its cache).</summary>
    [Id(8)] public string Silo { get; init; } = "";
    /// <summary>Caches this shard freed because their gateway's lease expired.</summary>
    [Id(9)] public long Reclaimed { get; init; }
    /// <summary>The host's latent-cache budget in bytes (TotalBlocks whole blocks).</summary>
    [Id(10)] public long BytesBudget { get; init; }
    /// <summary>Prefix-cache blocks no sequence holds (evictable), blocks held by several sequences.</summary>
    [Id(11)] public long CachedBlocks { get; init; }
    [Id(12)] public long SharedBlocks { get; init; }
    /// <summary>Tokens looked up in / found in the host's prefix cache since it started; cached blocks evicted.</summary>
    [Id(13)] public long PrefixQueries { get; init; }
    [Id(14)] public long PrefixHits { get; init; }
    [Id(15)] public long Evictions { get; init; }
}

/// <summary>
/// An attention shard: owns the MLA latent caches of the sequences assigned to it for their whole life, on an
/// attention host, walks their steps layer by layer (attention, dense MLPs, gates, shared experts) and samples
/// their next tokens where the logits are. Only hidden states, tokens and logprobs cross the wire; caches and
/// logit rows never do. Sequences are keyed by (gateway lease id, sequence id); a gateway's lease is renewed by its
/// calls, and the caches of a lease that expired (Grid:Cluster:LeaseSeconds) are freed. Key: the shard index.
/// </summary>
public interface IAttentionGrain : IGrainWithIntegerKey
{
    /// <summary>
    /// Embeds the chunks' tokens and runs layers up to the first MoE dispatch (or the end of the step); with the shard
    /// exchange and <see cref="StepStart.WalkLayers"/> it walks on through that many MoE layers (the whole step: one call).
    /// The gateway's own deadline bounds the call; Orleans' response timeout is lifted to fit a long step.
    /// </summary>
    [ResponseTimeout("00:30:00")]
    Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default);

    /// <summary>Folds in the routed experts' output [n, d] of the owner's pending MoE layer and runs on to the next dispatch.</summary>
    Task<StepProgress> ContinueStepAsync(Guid owner, long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default);

    /// <summary>
    /// Starts the owner's new sequences from the longest cached prefix of their tokens (prefix caching): per query, the
    /// positions the shard now holds (0: none); the sequence's first chunk continues there.
    /// </summary>
    Task<int[]> AttachPrefixAsync(Guid owner, PrefixQuery[] queries, CancellationToken cancellationToken = default);

    /// <summary>
    /// MoE layers in one call (the <see cref="ExpertExchange.Shard"/> walk): runs the routed experts of the owner's
    /// pending MoE layer <paramref name="layer"/> (the groups this silo holds in place, the others on their
    /// expert-group grains, retried there when a group's silo leaves), folds their sum in and runs on to the next
    /// MoE layer; repeats for up to <paramref name="layers"/> MoE layers (0: to the end of the step).
    /// </summary>
    [ResponseTimeout("00:30:00")]
    Task<StepProgress> ExchangeStepAsync(Guid owner, long stepId, int layer, int layers, CancellationToken cancellationToken = default);

    /// <summary>Frees the latent caches of the owner's given sequences (ended or cancelled).</summary>
    Task ReleaseAsync(Guid owner, long[] sequenceIds, CancellationToken cancellationToken = default);

    /// <summary>Renews the owner's lease (every call of the owner renews it too).</summary>
    Task RenewLeaseAsync(Guid owner, CancellationToken cancellationToken = default);

    /// <summary>The shard's cache as <paramref name="owner"/> sees it (its own blocks counted apart).</summary>
    Task<CacheReport> GetCacheAsync(Guid owner, CancellationToken cancellationToken = default);

    Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default);
}
