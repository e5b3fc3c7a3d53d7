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
            ["choices"] = new JsonArray(choices.Choices.Select(c =>
            {
                var call = ToolCallOf(request, c.Builder);
                var message = new JsonObject { ["role"] = "assistant", ["content"] = call is null ? c.Builder.Text : call.Content };
                if (call is not null) message["tool_calls"] = new JsonArray(call.Calls.Select(x => (JsonNode)x.ToJson()).ToArray());
                return (JsonNode)new JsonObject
                {
                    ["index"] = c.Index,
                    ["message"] = message,
                    ["logprobs"] = request.Logprobs ? new JsonObject { ["content"] = c.Builder.ChatLogprobsContent() } : null,
                    ["finish_reason"] = call is null ? c.Builder.FinishReason : "tool_calls",
                };
            }).ToArray()),
            ["usage"] = choices.Usage(),
        };
        await OpenAiJson.WriteAsync(ctx.Http.Response, response, ctx.Aborted);
    }

    /// <summary>The tool calls a finished choice made (a complete output that is a call), or null.</summary>
    public static ParsedCalls? ToolCallOf(ChatRequest request, CompletionBuilder builder) =>
        request.Tools is { Mode: not ToolMode.None } tools && builder.FinishReason == "stop" ? tools.ParseCalls(builder.Text) : null;
}
