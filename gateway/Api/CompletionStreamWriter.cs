using System.Text.Json.Nodes;

namespace Grid.Gateway.Api;

/// <summary>
/// A streamed <c>/v1/completions</c> response (SSE): a <c>text_completion</c> chunk per echo, text delta (or token
/// with logprobs) and finish, then the usage chunk when <c>stream_options.include_usage</c>, then <c>[DONE]</c>.
/// </summary>
public static class CompletionStreamWriter
{
    public static async Task WriteAsync(ApiContext ctx, CompletionRequest request, ChoiceSet choices, IAsyncEnumerable<ChoiceUpdate> updates)
    {
        var id = CompletionRequest.IdPrefix + ctx.RequestId;
        var created = OpenAiJson.Now();
        var includeUsage = request.Sampling.IncludeUsage;
        JsonObject Chunk(JsonObject choice)
        {
            var chunk = new JsonObject
            {
                ["id"] = id,
                ["object"] = "text_completion",
                ["created"] = created,
                ["model"] = request.Sampling.Model,
                ["choices"] = new JsonArray(choice),
            };
            if (includeUsage) chunk["usage"] = null;
            return chunk;
        }
        var response = ctx.Http.Response;
        await using var sse = await SseStream.StartAsync(response, ctx.KeepAlive, ctx.Time, ctx.Aborted);
        await foreach (var update in updates.WithCancellation(ctx.Aborted))
        {
            JsonObject? choice = update switch
            {
                EchoUpdate e => Choice(e.Choice.Index, e.Text, e.Logprobs, null),
                TokenUpdate t when t.Delta.Length > 0 || t.LegacyLogprobs is not null => Choice(t.Choice.Index, t.Delta, t.LegacyLogprobs, null),
                FinishUpdate f => Choice(f.Choice.Index, f.Delta, null, f.Reason),
                _ => null,
            };
            if (choice is not null) await sse.WriteAsync(Chunk(choice));
        }
        if (includeUsage)
        {
            var last = Chunk(new JsonObject());
            last["choices"] = new JsonArray();
            last["usage"] = choices.Usage();
            await sse.WriteAsync(last);
        }
        await sse.DoneAsync();
    }

    static JsonObject Choice(int index, string text, JsonObject? logprobs, string? finish) => new()
    {
        ["index"] = index,
        ["text"] = text,
        ["logprobs"] = logprobs,
        ["finish_reason"] = finish,
    };
}
