using Grid.ModelCore.Config;

namespace Grid.ModelCore.Serving;

/// <summary>New tokens of one sequence for one step; <see cref="AllLogits"/> asks for every position's logits (prompt logprobs).</summary>
public sealed record StepChunk(long SequenceId, int[] Tokens, bool AllLogits = false);

/// <summary>Latent cache occupancy of the hosts an executor drives.</summary>
public readonly record struct CacheStats(long Sequences, long Tokens, long BytesInUse, long BytesReserved);

/// <summary>
/// Runs forward steps of the model over batches of sequences, wherever the model lives: in this process
/// (<see cref="LocalStepExecutor"/>) or across a grid of silos. Sequences are created on their first chunk
/// and keep their latent cache until <see cref="ReleaseAsync"/>.
/// </summary>
public interface IStepExecutor : IAsyncDisposable
{
    ModelConfig Config { get; }

    /// <summary>One step: logits (float32, vocab-sized) per requested row: each chunk's last token, or all its tokens.</summary>
    Task<float[][]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken);

    /// <summary>Frees the sequence's latent cache. Unknown ids are ignored.</summary>
    Task ReleaseAsync(long sequenceId, CancellationToken cancellationToken);

    Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken);
}
