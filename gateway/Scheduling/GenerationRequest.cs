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
}

/// <summary>A generated token, or the prompt's logprobs, or the end of the sequence.</summary>
public abstract record GenerationEvent;
public sealed record TokenEvent(SampledToken Token) : GenerationEvent;
public sealed record PromptLogprobsEvent(SampledToken?[] Tokens) : GenerationEvent;
public sealed record FinishedEvent(string Reason, int PromptTokens, int CompletionTokens) : GenerationEvent;

/// <summary>One step as it ran: for the step log and the tests that check batching.</summary>
public sealed record StepRecord(long Step, int DecodeSequences, int PrefillSequences, int PrefillTokens, double Milliseconds, long[] SequenceIds);
