using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.Gateway.Scheduling;
using Grid.ChatTemplates;
using Grid.ModelCore.Tokenization;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Api;

/// <summary><c>POST /v1/chat/completions</c>: messages rendered with the checkpoint's chat template.</summary>
public static class ChatEndpoint
{
    public const int MaxMessages = 4096;

    public static Task HandleAsync(HttpContext http) => ApiContext.RunAsync(http, "chat.completions", RunAsync);

    static async Task RunAsync(ApiContext ctx)
    {
        var engine = ctx.Engine;
        var tokenizer = engine.Tokenizer!;
        using var doc = await RequestParsing.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted);
        var body = doc.RootElement;
        var wantLogprobs = body.OptBool("logprobs") ?? false;
        var top = body.OptInt("top_logprobs", 0, 20);
        if (top is not null && !wantLogprobs) throw ApiException.Invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        var fields = RequestFields.Parse(body, engine, ctx.Options.Http, chat: true, wantLogprobs ? top ?? 0 : null);
        CheckUnsupported(body);
        var messages = ParseMessages(body);
        var addGenerationPrompt = body.OptBool("add_generation_prompt") ?? true;
        if (!tokenizer.HasChatTemplate) throw ApiException.Invalid($"the model '{engine.ModelName}' has no chat template; use /v1/completions", "messages", "no_chat_template");
        int[] prompt;
        try { prompt = tokenizer.EncodeChat(messages, addGenerationPrompt); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw ApiException.Invalid($"the chat template could not render these messages: {e.Message}", "messages", "invalid_messages");
        }
        if (prompt.Length == 0) throw ApiException.Invalid("the rendered prompt is empty", "messages");
        var maxTokens = fields.ResolveMaxTokens(prompt.Length, engine.ContextLength, ctx.Options.Http.ChatDefaultMaxTokens, "messages");
        var stopIds = fields.StopTokenSet(tokenizer.EosId);
        var choices = new List<ChoiceRun>();
        try
        {
            for (int j = 0; j < fields.N; j++)
            {
                var request = new GenerationRequest
                {
                    PromptIds = prompt,
                    Sampling = fields.Sampling(j, wantLogprobs ? top ?? 0 : 0),
                    MaxTokens = maxTokens,
                    StopTokenIds = stopIds,
                };
                choices.Add(new ChoiceRun(j, prompt, request, new CompletionBuilder(tokenizer, false, fields.TokensAsIds, fields.Stops), false, ctx.Aborted));
            }
            ctx.Telemetry.PromptTokens.Add(prompt.Length);
            ctx.Logger.LogInformation("request {RequestId}: chat, {Messages} messages, {PromptTokens} prompt tokens, n {N}, max_tokens {MaxTokens}, stream {Stream}",
                ctx.RequestId, messages.Count, prompt.Length, fields.N, maxTokens, fields.Stream);
            var id = "chatcmpl-" + ctx.RequestId;
            var created = OpenAiJson.Now();
            var updates = new GenerationRunner(engine, ctx.Telemetry)
                .RunAsync(choices, legacyLogprobs: false, chatLogprobs: wantLogprobs, fields.TokensAsIds, ctx.StartTimestamp, ctx.Aborted);
            if (!fields.Stream)
            {
                await foreach (var _ in updates.WithCancellation(ctx.Aborted)) { }
                var response = new JsonObject
                {
                    ["id"] = id,
                    ["object"] = "chat.completion",
                    ["created"] = created,
                    ["model"] = fields.Model,
                    ["choices"] = new JsonArray(choices.Select(c => (JsonNode)new JsonObject
                    {
                        ["index"] = c.Index,
                        ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = c.Builder.Text },
                        ["logprobs"] = wantLogprobs ? new JsonObject { ["content"] = c.Builder.ChatLogprobsContent() } : null,
                        ["finish_reason"] = c.Builder.FinishReason,
                    }).ToArray()),
                    ["usage"] = CompletionsEndpoint.Usage(prompt.Length, choices),
                };
                ctx.Http.Response.ContentType = "application/json";
                await ctx.Http.Response.WriteAsync(response.ToJsonString(OpenAiJson.Options), ctx.Aborted);
                return;
            }
            JsonObject Chunk(int index, JsonObject delta, JsonObject? logprobs, string? finish)
            {
                var chunk = new JsonObject
                {
                    ["id"] = id,
                    ["object"] = "chat.completion.chunk",
                    ["created"] = created,
                    ["model"] = fields.Model,
                    ["choices"] = new JsonArray(new JsonObject
                    {
                        ["index"] = index,
                        ["delta"] = delta,
                        ["logprobs"] = logprobs,
                        ["finish_reason"] = finish,
                    }),
                };
                if (fields.IncludeUsage) chunk["usage"] = null;
                return chunk;
            }
            await Sse.StartAsync(ctx.Http.Response, ctx.Aborted);
            foreach (var c in choices)
                await Sse.WriteAsync(ctx.Http.Response, Chunk(c.Index, new JsonObject { ["role"] = "assistant", ["content"] = "" }, null, null), ctx.Aborted);
            await foreach (var update in updates.WithCancellation(ctx.Aborted))
            {
                JsonObject? chunk = update switch
                {
                    TokenUpdate t when t.Delta.Length > 0 || t.ChatLogprobs is not null => Chunk(t.Choice.Index, new JsonObject { ["content"] = t.Delta },
                        t.ChatLogprobs is null ? null : new JsonObject { ["content"] = new JsonArray(t.ChatLogprobs) }, null),
                    FinishUpdate f => Chunk(f.Choice.Index, f.Delta.Length > 0 ? new JsonObject { ["content"] = f.Delta } : new JsonObject(), null, f.Reason),
                    _ => null,
                };
                if (chunk is not null) await Sse.WriteAsync(ctx.Http.Response, chunk, ctx.Aborted);
            }
            if (fields.IncludeUsage)
            {
                var last = Chunk(0, new JsonObject(), null, null);
                last["choices"] = new JsonArray();
                last["usage"] = CompletionsEndpoint.Usage(prompt.Length, choices);
                await Sse.WriteAsync(ctx.Http.Response, last, ctx.Aborted);
            }
            await Sse.DoneAsync(ctx.Http.Response, ctx.Aborted);
        }
        finally
        {
            foreach (var c in choices) c.Dispose();
        }
    }

    static void CheckUnsupported(JsonElement body)
    {
        foreach (var name in new[] { "tools", "functions" })
            if (body.Field(name, out var v))
            {
                if (v.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType(name, $"a list, got {RequestParsing.Kind(v.ValueKind)}");
                if (v.GetArrayLength() > 0) throw RequestFields.Unsupported(name, name);
            }
        if (body.Field("tool_choice", out var choice) && !(choice.ValueKind == JsonValueKind.String && choice.GetString() is "none" or "auto"))
            throw RequestFields.Unsupported("tool_choice other than \"none\"", "tool_choice");
        if (body.Field("response_format", out var format))
        {
            if (format.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("response_format", $"an object, got {RequestParsing.Kind(format.ValueKind)}");
            if (format.OptString("type") is { } type && type != "text") throw RequestFields.Unsupported($"response_format type '{type}'", "response_format");
        }
    }

    /// <summary><c>messages</c>: a non-empty list of {role, content}, content a string or a list of text parts.</summary>
    static List<ChatMessage> ParseMessages(JsonElement body)
    {
        if (!body.Field("messages", out var list)) throw ApiException.Invalid("'messages' is required", "messages", "missing_required_parameter");
        if (list.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType("messages", $"a list of messages, got {RequestParsing.Kind(list.ValueKind)}");
        if (list.GetArrayLength() == 0) throw ApiException.Invalid("'messages' must hold at least one message", "messages", "empty_array");
        if (list.GetArrayLength() > MaxMessages) throw ApiException.OutOfRange($"'messages' may hold at most {MaxMessages} messages", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            var at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(at, $"an object, got {RequestParsing.Kind(m.ValueKind)}");
            if (!m.Field("role", out var roleValue)) throw ApiException.Invalid($"'{at}.role' is required", $"{at}.role", "missing_required_parameter");
            if (roleValue.ValueKind != JsonValueKind.String) throw ApiException.InvalidType($"{at}.role", $"a string, got {RequestParsing.Kind(roleValue.ValueKind)}");
            var role = roleValue.GetString() switch
            {
                "system" or "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                var other => throw ApiException.Invalid($"'{at}.role' must be one of system, developer, user, assistant; got '{other}'", $"{at}.role"),
            };
            m.OptString("name");
            string content;
            if (!m.Field("content", out var c))
            {
                if (role != "assistant") throw ApiException.Invalid($"'{at}.content' is required", $"{at}.content", "missing_required_parameter");
                content = "";
            }
            else if (c.ValueKind == JsonValueKind.String) content = c.GetString()!;
            else if (c.ValueKind == JsonValueKind.Array)
            {
                var text = new StringBuilder();
                int k = 0;
                foreach (var part in c.EnumerateArray())
                {
                    var p = $"{at}.content[{k++}]";
                    if (part.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(p, $"an object, got {RequestParsing.Kind(part.ValueKind)}");
                    var type = part.OptString("type");
                    if (type != "text") throw RequestFields.Unsupported($"content part type '{type}' (only \"text\")", $"{p}.type");
                    text.Append(part.OptString("text") ?? throw ApiException.Invalid($"'{p}.text' is required", $"{p}.text", "missing_required_parameter"));
                }
                content = text.ToString();
            }
            else throw ApiException.InvalidType($"{at}.content", $"a string or a list of content parts, got {RequestParsing.Kind(c.ValueKind)}");
            messages.Add(new ChatMessage(role, content));
        }
        return messages;
    }
}
