using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;

namespace Grid.Gateway.Scheduling;

/// <summary>What to generate for one sequence.</summary>
public sealed record GenerationRequest
{
    public required int[] PromptIds { get; init; }
    public SamplingParams Sampling { get; init; } = SamplingParams.Greedy;
    /// <summary>Which of the request's n choices this is: seeded draws depend on (seed, choice, token index) only.</summary>
    public int Choice { get; init; }
    public int MaxTokens { get; init; } = 16;
    /// <summary>Token ids that end the sequence (EOS unless IgnoreEos), reported as finish_reason "stop".</summary>
    public IReadOnlyCollection<int> StopTokenIds { get; init; } = [];
    /// <summary>Also return logprobs of the prompt tokens (for echo with logprobs).</summary>
    public bool PromptLogprobs { get; init; }
    /// <summary>Structured output: the generated tokens follow this grammar (masked where they are sampled).</summary>
    public TokenConstraint? Constraint { get; init; }
    /// <summary>When set, the engine notes here when the sequence was queued and first admitted (request metrics).</summary>
    public SequenceTimeline? Timeline { get; init; }
}

/// <summary>
/// <see cref="System.Diagnostics.Stopwatch"/> timestamps of a sequence's life in the engine (0: not yet), written by the
/// engine loop, read by the request once its events have ended: vLLM's queue and prefill times come from these.
/// </summary>
public sealed class SequenceTimeline
{
    long _queuedAt, _admittedAt;
    /// <summary>Submitted to the engine's queue.</summary>
    public long QueuedAt { get => Volatile.Read(ref _queuedAt); set => Volatile.Write(ref _queuedAt, value); }
    /// <summary>First admitted to the running batch (a preempted sequence keeps its first admission).</summary>
    public long AdmittedAt { get => Volatile.Read(ref _admittedAt); set => Volatile.Write(ref _admittedAt, value); }
}

/// <summary>A generated token, or the prompt's logprobs, or the end of the sequence.</summary>
public abstract record GenerationEvent;
public sealed record TokenEvent(SampledToken Token) : GenerationEvent;
public sealed record PromptLogprobsEvent(SampledToken?[] Tokens) : GenerationEvent;
public sealed record FinishedEvent(string Reason, int PromptTokens, int CompletionTokens) : GenerationEvent
{
    /// <summary>Prompt tokens its first admission took from the prefix cache instead of computing them (OpenAI's usage.prompt_tokens_details.cached_tokens).</summary>
    public int CachedTokens { get; init; }
}

/// <summary>One step as it ran: for the step log and the tests that check batching.</summary>
public sealed record StepRecord(long Step, int DecodeSequences, int PrefillSequences, int PrefillTokens, double Milliseconds, long[] SequenceIds);
