using System.Text.Json.Nodes;

namespace Grid.Gateway.Api;

/// <summary>
/// A streamed <c>/v1/chat/completions</c> response (SSE): a first chunk per choice with <c>delta.role</c>, then
/// <c>delta.content</c> chunks (with chat-form logprobs when asked), a chunk with <c>finish_reason</c>, the usage
/// chunk when <c>stream_options.include_usage</c>, then <c>[DONE]</c>.
/// </summary>
public static class ChatStreamWriter
{
    public static async Task WriteAsync(ApiContext ctx, ChatRequest request, ChoiceSet choices, IAsyncEnumerable<ChoiceUpdate> updates)
    {
        var id = ChatRequest.IdPrefix + ctx.RequestId;
        var created = OpenAiJson.Now();
        var includeUsage = request.Sampling.IncludeUsage;
        JsonObject Chunk(int index, JsonObject delta, JsonObject? logprobs, string? finish)
        {
            var chunk = new JsonObject
            {
                ["id"] = id,
                ["object"] = "chat.completion.chunk",
                ["created"] = created,
                ["model"] = request.Sampling.Model,
                ["choices"] = new JsonArray(new JsonObject
                {
                    ["index"] = index,
                    ["delta"] = delta,
                    ["logprobs"] = logprobs,
                    ["finish_reason"] = finish,
                }),
            };
            if (includeUsage) chunk["usage"] = null;
            return chunk;
        }
        var response = ctx.Http.Response;
        await using var sse = await SseStream.StartAsync(response, ctx.KeepAlive, ctx.Time, ctx.Aborted);
        foreach (var c in choices.Choices)
            await sse.WriteAsync(Chunk(c.Index, new JsonObject { ["role"] = "assistant", ["content"] = "" }, null, null));
        var tools = request.Tools is { Mode: not ToolMode.None } t0 ? t0 : null;
        var streamedCalls = new Dictionary<int, ToolCall>();
        await foreach (var update in updates.WithCancellation(ctx.Aborted))
        {
            if (tools is not null)
            {
                foreach (var toolChunk in ToolChunks(update))
                    await sse.WriteAsync(toolChunk);
                continue;
            }
            JsonObject? chunk = update switch
            {
                TokenUpdate t when t.Delta.Length > 0 || t.ChatLogprobs is not null => Chunk(t.Choice.Index, new JsonObject { ["content"] = t.Delta },
                    t.ChatLogprobs is null ? null : new JsonObject { ["content"] = new JsonArray(t.ChatLogprobs) }, null),
                FinishUpdate f => Chunk(f.Choice.Index, f.Delta.Length > 0 ? new JsonObject { ["content"] = f.Delta } : new JsonObject(), null, f.Reason),
                _ => null,
            };
            if (chunk is not null) await sse.WriteAsync(chunk);
        }
        IEnumerable<JsonObject> ToolChunks(ChoiceUpdate update)
        {
            // A forced call streams its arguments as deltas; otherwise (auto, required among several) the output is held
            // until the choice ends, then sent as one tool call or as content.
            var index = update.Choice.Index;
            if (tools!.Forced is { } forced)
            {
                if (update is TokenUpdate t && (t.Delta.Length > 0 || t.ChatLogprobs is not null))
                {
                    JsonObject call;
                    if (!streamedCalls.TryGetValue(index, out var started))
                    {
                        streamedCalls[index] = started = new ToolCall(forced.Name, "");
                        call = started.ToJson(0);
                        call["function"]!["arguments"] = t.Delta;
                    }
                    else call = new JsonObject { ["index"] = 0, ["function"] = new JsonObject { ["arguments"] = t.Delta } };
                    yield return Chunk(index, new JsonObject { ["tool_calls"] = new JsonArray(call) },
                        t.ChatLogprobs is null ? null : new JsonObject { ["content"] = new JsonArray(t.ChatLogprobs) }, null);
                }
                else if (update is FinishUpdate f)
                {
                    var delta = new JsonObject();
                    if (f.Delta.Length > 0) delta["tool_calls"] = new JsonArray(new JsonObject { ["index"] = 0, ["function"] = new JsonObject { ["arguments"] = f.Delta } });
                    var call = ChatJsonWriter.ToolCallOf(request, update.Choice.Builder);
                    yield return Chunk(index, delta, null, call is null ? f.Reason : "tool_calls");
                }
                yield break;
            }
            if (update is not FinishUpdate end) yield break;
            var parsed = ChatJsonWriter.ToolCallOf(request, update.Choice.Builder);
            var d = parsed is null ? new JsonObject { ["content"] = update.Choice.Builder.Text }
                : new JsonObject { ["tool_calls"] = new JsonArray(parsed.Calls.Select((x, i) => (JsonNode)x.ToJson(i)).ToArray()) };
            if (parsed?.Content is { } text) d["content"] = text;
            yield return Chunk(index, d, null, parsed is null ? end.Reason : "tool_calls");
        }

        if (includeUsage)
        {
            var last = Chunk(0, new JsonObject(), null, null);
            last["choices"] = new JsonArray();
            last["usage"] = choices.Usage();
            await sse.WriteAsync(last);
        }
        await sse.DoneAsync();
    }
}
