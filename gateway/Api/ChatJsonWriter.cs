using System.Text.Json.Nodes;

namespace Grid.Gateway.Api;

/// <summary>A complete <c>/v1/chat/completions</c> response: waits for every choice, then writes one <c>chat.completion</c> object.</summary>
public static class ChatJsonWriter
{
    public static async Task WriteAsync(ApiContext ctx, ChatRequest request, ChoiceSet choices, IAsyncEnumerable<ChoiceUpdate> updates)
    {
        var created = OpenAiJson.Now();
        await foreach (var _ in updates.WithCancellation(ctx.Aborted)) { }
        var response = new JsonObject
        {
            ["id"] = ChatRequest.IdPrefix + ctx.RequestId,
            ["object"] = "chat.completion",
            ["created"] = created,
            ["model"] = request.Sampling.Model,
            ["choices"] = new JsonArray(choices.Choices.Select(c => (JsonNode)new JsonObject
            {
                ["index"] = c.Index,
                ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = c.Builder.Text },
                ["logprobs"] = request.Logprobs ? new JsonObject { ["content"] = c.Builder.ChatLogprobsContent() } : null,
                ["finish_reason"] = c.Builder.FinishReason,
            }).ToArray()),
            ["usage"] = choices.Usage(),
        };
        await OpenAiJson.WriteAsync(ctx.Http.Response, response, ctx.Aborted);
    }
}
