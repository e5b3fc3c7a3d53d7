namespace Grid.Configuration;

/// <summary>Scheduler limits (config <c>Grid:Scheduler:*</c>).</summary>
public sealed record SchedulerOptions
{
    /// <summary>Most sequences in the running batch; more wait in the queue.</summary>
    public int MaxRunningSequences { get; init; } = 64;
    /// <summary>Most new tokens (decode + prefill) one step carries.</summary>
    public int MaxBatchedTokens { get; init; } = 512;
    /// <summary>Longest prefill chunk of one sequence per step, so running streams keep flowing.</summary>
    public int PrefillChunkTokens { get; init; } = 256;
    /// <summary>Log every step at Information (otherwise Debug).</summary>
    public bool LogSteps { get; init; }
}
