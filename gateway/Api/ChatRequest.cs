using System.Text;
using System.Text.Json;
using Grid.ChatTemplates;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Api;

/// <summary>
/// A <c>POST /v1/chat/completions</c> body, parsed and validated: the messages, rendered with the checkpoint's chat
/// template into the prompt, its generation budget checked against the context length, and chat-form logprobs.
/// </summary>
public sealed record ChatRequest
{
    public const int MaxMessages = 4096;
    /// <summary>Response ids are this prefix plus the request id.</summary>
    public const string IdPrefix = "chatcmpl-";

    public required SamplingRequest Sampling { get; init; }
    public required IReadOnlyList<ChatMessage> Messages { get; init; }
    /// <summary>The messages rendered with the chat template and tokenized (BOS comes from the template).</summary>
    public required int[] PromptIds { get; init; }
    /// <summary>The generation budget: <c>max_completion_tokens</c>/<c>max_tokens</c>, or the default within the context.</summary>
    public required int ResolvedMaxTokens { get; init; }
    /// <summary><c>logprobs: true</c>: chat-form logprobs of every generated token.</summary>
    public bool Logprobs { get; init; }
    /// <summary><c>top_logprobs</c> (0..20) alternatives per token; 0 without <see cref="Logprobs"/>.</summary>
    public int TopLogprobs { get; init; }
    /// <summary>Structured output (<c>response_format</c> json_object/json_schema, or a forced tool call); null: free text.</summary>
    public OutputGrammar? Grammar { get; init; }
    /// <summary><c>tools</c> and <c>tool_choice</c>; null without tools.</summary>
    public ToolSet? Tools { get; init; }

    /// <summary>Parses and validates the body and renders the prompt; every refusal is an <see cref="ApiException"/>.</summary>
    public static ChatRequest Parse(JsonElement body, ServingEngine engine, HttpOptions http)
    {
        var tokenizer = engine.Tokenizer!;
        var logprobs = body.OptBool("logprobs") ?? false;
        var top = body.OptInt("top_logprobs", 0, 20);
        if (top is not null && !logprobs) throw ApiException.Invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
        var sampling = SamplingRequest.Parse(body, engine, http, chat: true, logprobs ? top ?? 0 : null);
        CheckUnsupported(body);
        var grammar = ResponseFormat.Parse(body, engine);
        var tools = ToolSet.Parse(body, engine);
        grammar = tools?.Grammar(engine) ?? grammar;   // a forced call wins over response_format
        if (grammar is not null && sampling.MinTokens > 0)
            throw ApiException.Invalid("'min_tokens' cannot be combined with structured output ('response_format' or a forced tool call): a finished document may only end the choice", "min_tokens");
        var messages = ParseMessages(body);
        var addGenerationPrompt = body.OptBool("add_generation_prompt") ?? true;
        if (!tokenizer.HasChatTemplate) throw ApiException.Invalid($"the model '{engine.ModelName}' has no chat template; use /v1/completions", "messages", "no_chat_template");
        var (rendered, variables) = ToolPrompt.Prepare(messages, tools, tokenizer);
        messages = rendered.ToList();
        int[] prompt;
        try { prompt = tokenizer.EncodeChat(messages, addGenerationPrompt, variables); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw ApiException.Invalid($"the chat template could not render these messages: {e.Message}", "messages", "invalid_messages");
        }
        if (prompt.Length == 0) throw ApiException.Invalid("the rendered prompt is empty", "messages");
        return new ChatRequest
        {
            Sampling = sampling,
            Messages = messages,
            PromptIds = prompt,
            ResolvedMaxTokens = sampling.ResolveMaxTokens(prompt.Length, engine.ContextLength, engine.GenerationDefaults.MaxNewTokens ?? http.ChatDefaultMaxTokens, "messages"),
            Logprobs = logprobs,
            TopLogprobs = logprobs ? top ?? 0 : 0,
            Grammar = grammar,
            Tools = tools,
        };
    }

    /// <summary>One generation request per choice (<c>n</c>), all on the same prompt.</summary>
    public IReadOnlyList<GenerationRequest> GenerationRequests(int? eosId)
    {
        var stopIds = Sampling.StopTokenSet(eosId);
        // A constrained document ends with EOS (the only token left once it is complete), whatever ignore_eos says.
        if (Grammar is not null && eosId is int eos) stopIds = new HashSet<int>(stopIds) { eos };
        var constraint = Grammar?.For(PromptIds.Length, ResolvedMaxTokens, stopIds);
        return Enumerable.Range(0, Sampling.N).Select(j => new GenerationRequest
        {
            PromptIds = PromptIds,
            Sampling = Sampling.Params(TopLogprobs, stopIds),
            Choice = j,
            MaxTokens = ResolvedMaxTokens,
            StopTokenIds = stopIds,
            Constraint = constraint,
        }).ToArray();
    }

    /// <summary>Tools, functions and structured output are refused unless empty or neutral.</summary>
    static void CheckUnsupported(JsonElement body)
    {
        if (body.Field("functions", out var v))
        {
            if (v.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType("functions", $"a list, got {JsonFields.Kind(v.ValueKind)}");
            if (v.GetArrayLength() > 0) throw ApiException.Unsupported("functions (the legacy form; use tools)", "functions");
        }
    }

    /// <summary><c>messages</c>: a non-empty list of {role, content}, content a string or a list of text parts.</summary>
    public static List<ChatMessage> ParseMessages(JsonElement body)
    {
        if (!body.Field("messages", out var list)) throw ApiException.Invalid("'messages' is required", "messages", "missing_required_parameter");
        if (list.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType("messages", $"a list of messages, got {JsonFields.Kind(list.ValueKind)}");
        if (list.GetArrayLength() == 0) throw ApiException.Invalid("'messages' must hold at least one message", "messages", "empty_array");
        if (list.GetArrayLength() > MaxMessages) throw ApiException.OutOfRange($"'messages' may hold at most {MaxMessages} messages", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
            messages.Add(ParseMessage(m, $"messages[{i++}]"));
        return messages;
    }

    static ChatMessage ParseMessage(JsonElement m, string at)
    {
        if (m.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(at, $"an object, got {JsonFields.Kind(m.ValueKind)}");
        if (!m.Field("role", out var roleValue)) throw ApiException.Invalid($"'{at}.role' is required", $"{at}.role", "missing_required_parameter");
        if (roleValue.ValueKind != JsonValueKind.String) throw ApiException.InvalidType($"{at}.role", $"a string, got {JsonFields.Kind(roleValue.ValueKind)}");
        var role = roleValue.GetString() switch
        {
            "system" or "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            var other => throw ApiException.Invalid($"'{at}.role' must be one of system, developer, user, assistant, tool; got '{other}'", $"{at}.role"),
        };
        m.OptString("name");
        string content;
        var calls = role == "assistant" ? ParseToolCalls(m, at) : null;
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
                if (part.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(p, $"an object, got {JsonFields.Kind(part.ValueKind)}");
                var type = part.OptString("type");
                if (type != "text") throw ApiException.Unsupported($"content part type '{type}' (only \"text\")", $"{p}.type");
                text.Append(part.OptString("text") ?? throw ApiException.Invalid($"'{p}.text' is required", $"{p}.text", "missing_required_parameter"));
            }
            content = text.ToString();
        }
        else throw ApiException.InvalidType($"{at}.content", $"a string or a list of content parts, got {JsonFields.Kind(c.ValueKind)}");
        if (role == "tool")
        {
            var id = m.OptString("tool_call_id") ?? throw ApiException.Invalid($"'{at}.tool_call_id' is required", $"{at}.tool_call_id", "missing_required_parameter");
            return new ChatMessage("tool", content, ToolCallId: id);
        }
        return new ChatMessage(role, content, calls is { Count: > 0 } ? calls : null);
    }

    /// <summary>An assistant message's <c>tool_calls</c> (id, function name, arguments checked to be JSON).</summary>
    static List<ChatToolCall>? ParseToolCalls(JsonElement m, string at)
    {
        if (!m.Field("tool_calls", out var list)) return null;
        if (list.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType($"{at}.tool_calls", $"a list, got {JsonFields.Kind(list.ValueKind)}");
        var calls = new List<ChatToolCall>();
        int i = 0;
        foreach (var call in list.EnumerateArray())
        {
            var p = $"{at}.tool_calls[{i++}]";
            if (call.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(p, $"an object, got {JsonFields.Kind(call.ValueKind)}");
            if (!call.Field("function", out var f) || f.ValueKind != JsonValueKind.Object)
                throw ApiException.Invalid($"'{p}.function' is required", $"{p}.function", "missing_required_parameter");
            var name = f.OptString("name") ?? throw ApiException.Invalid($"'{p}.function.name' is required", $"{p}.function.name", "missing_required_parameter");
            var args = f.OptString("arguments") ?? "{}";
            try { System.Text.Json.Nodes.JsonNode.Parse(args); }
            catch (JsonException) { throw ApiException.Invalid($"'{p}.function.arguments' is not valid JSON", $"{p}.function.arguments"); }
            calls.Add(new ChatToolCall(call.OptString("id") ?? "", name, args));
        }
        return calls;
    }
}
