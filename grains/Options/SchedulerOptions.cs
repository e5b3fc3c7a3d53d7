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
    /// <summary>Most requests (choices) waiting to be admitted; past it new requests get 429.</summary>
    public int MaxWaiting { get; init; } = 256;
    /// <summary>Longest a request may wait to be admitted, seconds; past it it gets 429 (0 = no limit).</summary>
    public double MaxQueueSeconds { get; init; } = 60;
    /// <summary>Log every step at Information (otherwise Debug).</summary>
    public bool LogSteps { get; init; }
}
