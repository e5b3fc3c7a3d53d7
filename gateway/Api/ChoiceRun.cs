using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Api;

/// <summary>One choice of a request: its prompt, its sequence in the scheduler and what it produced so far.</summary>
public sealed class ChoiceRun(int index, GenerationRequest request, CompletionBuilder builder, bool echo, CancellationToken requestAborted) : IDisposable
{
    public int Index { get; } = index;
    public int[] PromptIds => Request.PromptIds;
    public GenerationRequest Request { get; } = request;
    public CompletionBuilder Builder { get; } = builder;
    public bool Echo { get; } = echo;
    /// <summary>Cancels this choice's sequence: on a stop string, or when the client goes away (linked).</summary>
    public CancellationTokenSource Cancel { get; } = CancellationTokenSource.CreateLinkedTokenSource(requestAborted);
    /// <summary>Legacy logprobs text offset of the next token (streaming fragments).</summary>
    public int TextOffset { get; set; }
    public bool Finished { get; set; }
    public void Dispose() => Cancel.Dispose();
}
