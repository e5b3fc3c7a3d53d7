using System.Text.Json.Nodes;
using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Api;

/// <summary>
/// The choices of one request, one <see cref="ChoiceRun"/> per generation request (index = position), and the
/// request's <c>usage</c>. Disposing it releases the choices' cancellation sources.
/// </summary>
public sealed class ChoiceSet : IDisposable
{
    public ChoiceSet(IReadOnlyList<GenerationRequest> requests, int promptTokens, bool echo, Func<CompletionBuilder> newBuilder, CancellationToken requestAborted)
    {
        Choices = requests.Select((request, index) => new ChoiceRun(index, request, newBuilder(), echo, requestAborted)).ToArray();
        PromptTokens = promptTokens;
    }

    public IReadOnlyList<ChoiceRun> Choices { get; }
    /// <summary>Prompt tokens as <c>usage</c> counts them: once per prompt, not per choice.</summary>
    public int PromptTokens { get; }

    /// <summary><c>usage</c>: the prompt tokens and the tokens generated over all choices.</summary>
    public JsonObject Usage() => OpenAiJson.Usage(PromptTokens, Choices.Sum(c => c.Builder.CompletionTokens), CachedTokens);

    /// <summary>
    /// Prompt tokens served from the prefix cache, counted once per prompt like <see cref="PromptTokens"/>: per prompt,
    /// the most any of its choices reused.
    /// </summary>
    public int CachedTokens => Choices.GroupBy(c => c.Request.PromptIds).Sum(g => g.Max(c => c.Builder.CachedTokens));

    public void Dispose()
    {
        foreach (var c in Choices) c.Dispose();
    }
}
