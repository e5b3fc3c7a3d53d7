namespace Grid.Gateway.Api;

/// <summary>A complete <c>/v1/completions</c> response: waits for every choice, then writes one <c>text_completion</c> object.</summary>
public static class CompletionJsonWriter
{
    public static async Task WriteAsync(ApiContext ctx, CompletionRequest request, ChoiceSet choices, IAsyncEnumerable<ChoiceUpdate> updates)
    {
        await foreach (var _ in updates.WithCancellation(ctx.Aborted)) { }
        var response = OpenAiJson.TextCompletion(CompletionRequest.IdPrefix + ctx.RequestId, request.Sampling.Model,
            choices.Choices.Select(c => c.Builder.ChoiceJson(c.Index)), choices.Usage());
        await OpenAiJson.WriteAsync(ctx.Http.Response, response, ctx.Aborted);
    }
}
