using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Grid.ChatTemplates;
using Grid.Gateway.Hosting;
using Grid.ModelCore.Structured;

namespace Grid.Gateway.Api;

/// <summary>A function the client offers (<c>tools[i].function</c>).</summary>
public sealed record ToolFunction(string Name, string? Description, string Parameters, bool Strict);

/// <summary>How the model may call tools: <c>none</c>, <c>auto</c> (parsed if it does), <c>required</c>, or one named function.</summary>
public enum ToolMode { None, Auto, Required, Named }

/// <summary>
/// <c>tools</c> and <c>tool_choice</c>: the functions, the mode, and the grammar that forces a call. A named function (or
/// <c>required</c> with one function) constrains the output to that function's arguments (its JSON schema); <c>required</c>
/// with several functions constrains it to <c>{"name": one of them, "arguments": that function's schema}</c>. With <c>auto</c> the output
/// is free; a reply that is exactly such a JSON object naming an offered function is returned as a tool call.
/// </summary>
public sealed partial record ToolSet(IReadOnlyList<ToolFunction> Functions, ToolMode Mode, ToolFunction? Forced)
{
    public const int MaxTools = 128;

    [GeneratedRegex("^[a-zA-Z0-9_-]{1,64}$")]
    private static partial Regex FunctionName();

    /// <summary>The grammar that forces a call (named, or required), else null.</summary>
    public OutputGrammar? Grammar(ServingEngine engine)
    {
        if (Forced is { } f) return OutputGrammar.Compile(f.Parameters, f.Strict, "tools", engine);
        if (Mode != ToolMode.Required) return null;
        return OutputGrammar.Compile(CallSchema(Functions), Functions.All(x => x.Strict), "tools", engine);
    }

    /// <summary>
    /// The schema of one call of any of <paramref name="functions"/>: the union (anyOf) of
    /// <c>{"name": {"const": f}, "arguments": f's parameters}</c>, so the arguments follow the schema of the function the
    /// call names. Each function's parameters move to <c>$defs/f{i}</c> (its own definitions to <c>$defs/f{i}:$defs:NAME</c>
    /// and <c>$defs/f{i}:definitions:NAME</c>,
    /// its <c>$ref</c>s rewritten to match), so references resolve as they did in the function's own schema.
    /// </summary>
    public static string CallSchema(IReadOnlyList<ToolFunction> functions)
    {
        var defs = new JsonObject();
        var branches = new JsonArray();
        for (int i = 0; i < functions.Count; i++)
        {
            var parameters = JsonNode.Parse(functions[i].Parameters)!.AsObject();
            foreach (var defsKey in new[] { "$defs", "definitions" })
                if (parameters[defsKey] is JsonObject own)
                {
                    parameters.Remove(defsKey);
                    foreach (var (name, def) in own.ToList())
                    {
                        own.Remove(name);
                        defs[$"f{i}:{defsKey}:{name}"] = RewriteRefs(def, i);
                    }
                }
            defs[$"f{i}"] = RewriteRefs(parameters, i);
            branches.Add(new JsonObject
            {
                ["type"] = "object",
                ["properties"] = new JsonObject
                {
                    ["name"] = new JsonObject { ["const"] = functions[i].Name },
                    ["arguments"] = new JsonObject { ["$ref"] = $"#/$defs/f{i}" },
                },
                ["required"] = new JsonArray("name", "arguments"),
                ["additionalProperties"] = false,
            });
        }
        return new JsonObject { ["anyOf"] = branches, ["$defs"] = defs }.ToJsonString();
    }

    static JsonNode? RewriteRefs(JsonNode? node, int function)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (key, value) in o.ToList())
                {
                    if (key == "$ref" && value is JsonValue v && v.TryGetValue<string>(out var target))
                    {
                        o[key] = target == "#" ? $"#/$defs/f{function}"
                            : target.StartsWith("#/$defs/", StringComparison.Ordinal) ? $"#/$defs/f{function}:$defs:{target["#/$defs/".Length..]}"
                            : target.StartsWith("#/definitions/", StringComparison.Ordinal) ? $"#/$defs/f{function}:definitions:{target["#/definitions/".Length..]}"
                            : target;
                    }
                    else RewriteRefs(value, function);
                }
                return o;
            case JsonArray a:
                foreach (var item in a) RewriteRefs(item, function);
                return a;
            default:
                return node;
        }
    }

    public static ToolSet? Parse(JsonElement body, ServingEngine engine)
    {
        var functions = new List<ToolFunction>();
        if (body.Field("tools", out var tools))
        {
            if (tools.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType("tools", $"a list, got {JsonFields.Kind(tools.ValueKind)}");
            if (tools.GetArrayLength() > MaxTools) throw ApiException.OutOfRange($"'tools' may hold at most {MaxTools} tools", "tools");
            int i = 0;
            foreach (var t in tools.EnumerateArray())
            {
                var at = $"tools[{i++}]";
                if (t.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType(at, $"an object, got {JsonFields.Kind(t.ValueKind)}");
                var type = t.OptString("type");
                if (type != "function") throw ApiException.Invalid($"'{at}.type' must be 'function', got '{type}'", $"{at}.type");
                if (!t.Field("function", out var f) || f.ValueKind != JsonValueKind.Object)
                    throw ApiException.Invalid($"'{at}.function' is required", $"{at}.function", "missing_required_parameter");
                var name = f.OptString("name");
                if (name is null || !FunctionName().IsMatch(name))
                    throw ApiException.Invalid($"'{at}.function.name' must be 1 to 64 letters, digits, underscores or dashes", $"{at}.function.name");
                if (functions.Any(x => x.Name == name)) throw ApiException.Invalid($"'{at}.function.name': '{name}' is offered twice", $"{at}.function.name");
                string parameters = JsonSchemaGrammar.AnyObject;
                if (f.Field("parameters", out var p))
                {
                    if (p.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType($"{at}.function.parameters", $"an object, got {JsonFields.Kind(p.ValueKind)}");
                    parameters = p.GetRawText();
                }
                var strict = f.OptBool("strict") ?? false;
                OutputGrammar.Compile(parameters, strict, $"{at}.function.parameters", engine);
                functions.Add(new ToolFunction(name, f.OptString("description"), parameters, strict));
            }
        }
        var mode = functions.Count > 0 ? ToolMode.Auto : ToolMode.None;
        ToolFunction? forced = null;
        if (body.Field("tool_choice", out var choice))
        {
            if (choice.ValueKind == JsonValueKind.String)
            {
                mode = choice.GetString() switch
                {
                    "none" => ToolMode.None,
                    "auto" => ToolMode.Auto,
                    "required" => ToolMode.Required,
                    var other => throw ApiException.Invalid($"'tool_choice' must be none, auto, required or a function; got '{other}'", "tool_choice"),
                };
            }
            else if (choice.ValueKind == JsonValueKind.Object)
            {
                if (choice.OptString("type") != "function") throw ApiException.Invalid("'tool_choice.type' must be 'function'", "tool_choice.type");
                var name = choice.Field("function", out var cf) && cf.ValueKind == JsonValueKind.Object ? cf.OptString("name") : null;
                if (name is null) throw ApiException.Invalid("'tool_choice.function.name' is required", "tool_choice.function.name", "missing_required_parameter");
                forced = functions.FirstOrDefault(x => x.Name == name)
                    ?? throw ApiException.Invalid($"'tool_choice' names the function '{name}', which is not in 'tools'", "tool_choice");
                mode = ToolMode.Named;
            }
            else throw ApiException.InvalidType("tool_choice", $"a string or an object, got {JsonFields.Kind(choice.ValueKind)}");
            if (mode is ToolMode.Auto or ToolMode.Required && functions.Count == 0)
                throw ApiException.Invalid($"'tool_choice' '{choice.GetString()}' needs 'tools'", "tool_choice");
        }
        if (mode == ToolMode.Required && functions.Count == 1) forced = functions[0];
        return functions.Count == 0 ? null : new ToolSet(functions, mode, forced)
        {
            DeepSeekFormat = engine.Tokenizer?.ChatTemplateContains(DeepSeekToolCalls.CallsBegin) == true,
        };
    }

    /// <summary>
    /// The documented default rendering of tools for templates without tool support: a system message listing the
    /// functions (name, description, parameters) and how to call one, merged into the first system message.
    /// </summary>
    public IReadOnlyList<ChatMessage> Render(IReadOnlyList<ChatMessage> messages)
    {
        if (Mode == ToolMode.None) return messages;
        var list = new JsonArray(Functions.Select(f => (JsonNode)new JsonObject
        {
            ["name"] = f.Name,
            ["description"] = f.Description,
            ["parameters"] = JsonNode.Parse(f.Parameters),
        }).ToArray());
        var text = "You can call these functions:\n" + list.ToJsonString() +
            "\nTo call a function, reply with only a JSON object: {\"name\": <function name>, \"arguments\": <arguments object>}.";
        var result = messages.ToList();
        if (result.Count > 0 && result[0].Role == "system") result[0] = result[0] with { Content = result[0].Content + "\n\n" + text };
        else result.Insert(0, new ChatMessage("system", text));
        return result;
    }

    /// <summary>
    /// The template writes calls with DeepSeek's tool-call tokens (<see cref="DeepSeekToolCalls"/>), so a model prompted by
    /// it answers in that form; set from the chat template when the request is parsed.
    /// </summary>
    public bool DeepSeekFormat { get; init; }

    /// <summary>
    /// The calls parsed from the model's output, or null when the output is not a call: a forced call's output is the
    /// arguments; otherwise calls in DeepSeek's token form (when the template uses it) or one JSON object
    /// <c>{"name": ..., "arguments": {...}}</c> naming an offered function.
    /// </summary>
    public ParsedCalls? ParseCalls(string text)
    {
        if (Forced is { } f)
            return IsObject(text) ? new ParsedCalls(null, [new ToolCall(f.Name, text)]) : null;
        if (DeepSeekFormat && DeepSeekToolCalls.Parse(text, Functions) is { } calls) return calls;
        JsonNode? node;
        try { node = JsonNode.Parse(text.Trim()); }
        catch (JsonException) { return null; }
        if (node is not JsonObject o || o["name"] is not JsonValue v || !v.TryGetValue<string>(out var name)) return null;
        if (Functions.All(x => x.Name != name)) return null;
        var args = o["arguments"] ?? o["parameters"];
        if (args is not JsonObject) return null;
        return new ParsedCalls(null, [new ToolCall(name, args.ToJsonString())]);
    }

    /// <summary><c>tools</c> as a chat template sees them: OpenAI's list of <c>{"type": "function", "function": {...}}</c>.</summary>
    public JsonArray TemplateTools() => new(Functions.Select(f => (JsonNode)new JsonObject
    {
        ["type"] = "function",
        ["function"] = new JsonObject
        {
            ["name"] = f.Name,
            ["description"] = f.Description,
            ["parameters"] = JsonNode.Parse(f.Parameters),
        },
    }).ToArray());

    static bool IsObject(string text)
    {
        try { return JsonNode.Parse(text) is JsonObject; }
        catch (JsonException) { return false; }
    }
}

/// <summary>What a finished output holds when it calls tools: text before the calls (or null) and the calls.</summary>
public sealed record ParsedCalls(string? Content, IReadOnlyList<ToolCall> Calls);

/// <summary>
/// DeepSeek's tool-call form (the chat templates of DeepSeek-V2.5 and later):
/// <c>&lt;｜tool▁calls▁begin｜&gt;&lt;｜tool▁call▁begin｜&gt;function&lt;｜tool▁sep｜&gt;NAME\n```json\nARGS\n```&lt;｜tool▁call▁end｜&gt;...&lt;｜tool▁calls▁end｜&gt;</c>.
/// </summary>
public static partial class DeepSeekToolCalls
{
    public const string CallsBegin = "<｜tool▁calls▁begin｜>", CallBegin = "<｜tool▁call▁begin｜>", Separator = "<｜tool▁sep｜>",
        CallEnd = "<｜tool▁call▁end｜>", CallsEnd = "<｜tool▁calls▁end｜>";

    [GeneratedRegex(@"<｜tool▁call▁begin｜>\s*(?<type>[a-z_]*)\s*<｜tool▁sep｜>(?<name>[^\n<]+)\n```(?:json)?\n(?<args>.*?)\n```\s*<｜tool▁call▁end｜>", RegexOptions.Singleline)]
    private static partial Regex Call();

    /// <summary>
    /// The calls in <paramref name="text"/> after <see cref="CallsBegin"/>, each naming one of <paramref name="functions"/>
    /// with an object for arguments; null when there is no such block, or a call in it does not parse.
    /// </summary>
    public static ParsedCalls? Parse(string text, IReadOnlyList<ToolFunction> functions)
    {
        int begin = text.IndexOf(CallsBegin, StringComparison.Ordinal);
        if (begin < 0) return null;
        int end = text.IndexOf(CallsEnd, begin, StringComparison.Ordinal);
        var block = text[(begin + CallsBegin.Length)..(end < 0 ? text.Length : end)];
        var calls = new List<ToolCall>();
        int parsedUpTo = 0;
        foreach (Match m in Call().Matches(block))
        {
            if (block[parsedUpTo..m.Index].Trim().Length > 0) return null;   // something that is not a call between calls
            parsedUpTo = m.Index + m.Length;
            var name = m.Groups["name"].Value.Trim();
            if (m.Groups["type"].Value is not ("" or "function") || functions.All(f => f.Name != name)) return null;
            JsonNode? args;
            try { args = JsonNode.Parse(m.Groups["args"].Value); }
            catch (JsonException) { return null; }
            if (args is not JsonObject) return null;
            calls.Add(new ToolCall(name, args.ToJsonString()));
        }
        if (calls.Count == 0 || block[parsedUpTo..].Trim().Length > 0) return null;
        var content = text[..begin].Trim();
        return new ParsedCalls(content.Length == 0 ? null : content, calls);
    }
}

/// <summary>
/// How tools and tool turns reach the prompt. A chat template that reads <c>tool_calls</c> gets assistant calls and
/// <c>tool</c> turns as they are (<c>message['tool_calls']</c>, <c>message['tool_call_id']</c>); otherwise the documented
/// default: calls as JSON lines in the assistant's content and each tool result as a user turn naming its call. A
/// template that reads <c>tools</c> gets the offered functions as the <c>tools</c> variable; otherwise
/// <see cref="ToolSet.Render"/> lists them in the system message.
/// </summary>
public static class ToolPrompt
{
    public static (IReadOnlyList<ChatMessage> Messages, IReadOnlyDictionary<string, object?>? Variables) Prepare(
        IReadOnlyList<ChatMessage> messages, ToolSet? tools, Grid.ModelCore.Tokenization.GridTokenizer tokenizer)
    {
        var list = tokenizer.ChatTemplateMentions("tool_calls") ? messages : DefaultTurns(messages);
        if (tools is null || tools.Mode == ToolMode.None) return (list, null);
        if (tokenizer.ChatTemplateMentions("tools"))
            return (list, new Dictionary<string, object?> { ["tools"] = tools.TemplateTools() });
        return (tools.Render(list), null);
    }

    /// <summary>The default rendering of tool turns, for templates that know only role and content.</summary>
    public static IReadOnlyList<ChatMessage> DefaultTurns(IReadOnlyList<ChatMessage> messages) => messages.Select(m =>
    {
        if (m.Role == "tool") return new ChatMessage("user", $"Tool result ({m.ToolCallId}): {m.Content}");
        if (m.ToolCalls is not { Count: > 0 } calls) return m;
        var lines = string.Join("\n", calls.Select(c => new JsonObject { ["name"] = c.Name, ["arguments"] = JsonNode.Parse(c.Arguments) }.ToJsonString()));
        return new ChatMessage(m.Role, m.Content.Length == 0 ? lines : m.Content + "\n" + lines);
    }).ToList();
}

/// <summary>A function call the model made: the function's name and its arguments as JSON text.</summary>
public sealed record ToolCall(string Name, string Arguments)
{
    public string Id { get; } = "call_" + Guid.NewGuid().ToString("N")[..24];

    public JsonObject ToJson(int? index = null)
    {
        var o = new JsonObject();
        if (index is int i) o["index"] = i;
        o["id"] = Id;
        o["type"] = "function";
        o["function"] = new JsonObject { ["name"] = Name, ["arguments"] = Arguments };
        return o;
    }
}
