namespace Grid.Grains.Contracts;

/// <summary>New tokens of one sequence in a step.</summary>
[GenerateSerializer, Immutable]
public sealed record ChunkInput(
    [property: Id(0)] long SequenceId,
    [property: Id(1)] int[] Tokens,
    [property: Id(2)] bool AllLogits);

/// <summary>Starts a step on an attention shard: its sequences' chunks and the deployment's device limit.</summary>
[GenerateSerializer, Immutable]
public sealed record StepStart(
    [property: Id(0)] long StepId,
    [property: Id(1)] ChunkInput[] Chunks,
    [property: Id(2)] int DeviceGroups,
    [property: Id(3)] int MaxGroupsPerToken);

/// <summary>
/// Where a shard's step stands: either a MoE layer that needs its routed experts (input rows [n, d] with
/// their top-K ids and weights), or the end of the step (logits [rows, V], float32).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record StepProgress(
    [property: Id(0)] int Layer,
    [property: Id(1)] TensorPayload? Input,
    [property: Id(2)] int TopK,
    [property: Id(3)] int[]? ExpertIds,
    [property: Id(4)] float[]? Weights,
    [property: Id(5)] TensorPayload? Logits)
{
    public bool Finished => Logits is not null;
}

[GenerateSerializer, Immutable]
public sealed record CacheReport(
    [property: Id(0)] long Sequences,
    [property: Id(1)] long Tokens,
    [property: Id(2)] long BytesInUse,
    [property: Id(3)] long BytesReserved);

/// <summary>
/// An attention shard: owns the MLA latent caches of the sequences assigned to it for their whole life, on an
/// attention host, and walks their steps layer by layer (attention, dense MLPs, gates, shared experts).
/// Only hidden states cross the wire; caches never do. Key: the shard index.
/// </summary>
public interface IAttentionGrain : IGrainWithIntegerKey
{
    /// <summary>Embeds the chunks' tokens and runs layers up to the first MoE dispatch (or the logits).</summary>
    Task<StepProgress> StartStepAsync(StepStart start, CancellationToken cancellationToken = default);

    /// <summary>Folds in the routed experts' output [n, d] of the pending MoE layer and runs on to the next dispatch.</summary>
    Task<StepProgress> ContinueStepAsync(long stepId, TensorPayload routedOutput, CancellationToken cancellationToken = default);

    /// <summary>Frees the latent caches of the given sequences (ended or cancelled).</summary>
    Task ReleaseAsync(long[] sequenceIds, CancellationToken cancellationToken = default);

    Task<CacheReport> GetCacheAsync(CancellationToken cancellationToken = default);

    Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default);
}
