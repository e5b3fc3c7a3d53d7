namespace Grid.Gateway.Api;

/// <summary>A complete <c>/v1/completions</c> response: waits for every choice, then writes one <c>text_completion</c> object.</summary>
public static class CompletionJsonWriter
{
    public static async Task WriteAsync(ApiContext ctx, CompletionRequest request, ChoiceSet choices, IAsyncEnumerable<ChoiceUpdate> updates)
    {
        await foreach (var _ in updates.WithCancellation(ctx.Aborted)) { }
        var sampling = request.Sampling;
        var returned = Best(choices.Choices, sampling.BestOf, sampling.N);
        var response = OpenAiJson.TextCompletion(CompletionRequest.IdPrefix + ctx.RequestId, sampling.Model,
            returned.Select((c, i) => c.Builder.ChoiceJson(i)),
            OpenAiJson.Usage(choices.PromptTokens, returned.Sum(c => c.Builder.CompletionTokens), choices.CachedTokens));
        await OpenAiJson.WriteAsync(ctx.Http.Response, response, ctx.Aborted);
    }

    /// <summary>
    /// <c>best_of</c>: of each prompt's <paramref name="bestOf"/> candidates (consecutive), the <paramref name="n"/> with the
    /// highest cumulative logprob, best first (ties: the earlier candidate), as vLLM ranks them. With best_of = n: all, in order.
    /// </summary>
    public static IReadOnlyList<ChoiceRun> Best(IReadOnlyList<ChoiceRun> candidates, int bestOf, int n)
    {
        if (bestOf == n) return candidates;
        return candidates.Chunk(bestOf)
            .SelectMany(group => group.OrderByDescending(c => c.Builder.CumulativeLogprob).ThenBy(c => c.Index).Take(n))
            .ToArray();
    }
}
