using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>Collects one choice's events into text, legacy logprobs, finish reason and token counts.</summary>
public sealed class CompletionBuilder
{
    readonly GridTokenizer _tokenizer;
    readonly TextAccumulator _text;
    readonly LegacyLogprobs? _logprobs;
    readonly List<JsonObject> _chatLogprobs = new();
    string _echo = "";

    public string? FinishReason { get; private set; }
    public int PromptTokens { get; set; }
    public int CompletionTokens { get; private set; }
    public string Text => _echo + _text.Text;
    public bool StopStringHit => _text.Stopped;

    public CompletionBuilder(GridTokenizer tokenizer, bool logprobs, bool tokensAsIds, IReadOnlyList<string> stops)
    {
        _tokenizer = tokenizer;
        _text = new TextAccumulator(tokenizer, stops);
        _logprobs = logprobs ? new LegacyLogprobs(tokenizer, tokensAsIds) : null;
        LogprobRenderer = new LegacyLogprobs(tokenizer, tokensAsIds);
    }

    public LegacyLogprobs LogprobRenderer { get; }

    /// <summary>Echo: the prompt's text (and its logprobs where asked) goes before the completion.</summary>
    public void Echo(int[] promptIds, Grid.ModelCore.Sampling.SampledToken?[]? promptLogprobs)
    {
        _echo = _tokenizer.Decode(promptIds);
        if (_logprobs is null) return;
        for (int i = 0; i < promptIds.Length; i++)
            _logprobs.Add(promptIds[i], promptLogprobs?[i], _tokenizer.TokenText(promptIds[i]).Length);
    }

    /// <summary>Applies one event; returns the text delta it produced (for streaming).</summary>
    public string Add(GenerationEvent ev)
    {
        switch (ev)
        {
            case TokenEvent t when FinishReason is null && !_text.Stopped:
                CompletionTokens++;
                var delta = _text.Add(t.Token.Token);
                _logprobs?.Add(t.Token.Token, t.Token, _tokenizer.TokenText(t.Token.Token).Length);
                _chatLogprobs.Add(LogprobRenderer.ChatEntry(t.Token));
                if (_text.Stopped) FinishReason = "stop";
                return delta;
            case FinishedEvent f:
                PromptTokens = f.PromptTokens;
                FinishReason ??= f.Reason;
                return _text.Flush();
            default:
                return "";
        }
    }

    public JsonObject? LogprobsJson() => _logprobs?.ToJson();

    public JsonArray ChatLogprobsContent() => new(_chatLogprobs.Select(x => (JsonNode)x.DeepClone()).ToArray());

    public JsonObject ChoiceJson(int index) => new()
    {
        ["index"] = index,
        ["text"] = Text,
        ["logprobs"] = LogprobsJson(),
        ["finish_reason"] = FinishReason,
    };

    public JsonObject Usage() => OpenAiJson.Usage(PromptTokens, CompletionTokens);
}

/// <summary>OpenAI response shapes.</summary>
public static class OpenAiJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    public static JsonObject Usage(int prompt, int completion) => new()
    {
        ["prompt_tokens"] = prompt,
        ["completion_tokens"] = completion,
        ["total_tokens"] = prompt + completion,
    };

    public static JsonObject TextCompletion(string id, string model, IEnumerable<JsonObject> choices, JsonObject? usage) => new()
    {
        ["id"] = id,
        ["object"] = "text_completion",
        ["created"] = Now(),
        ["model"] = model,
        ["choices"] = new JsonArray(choices.Select(c => (JsonNode)c).ToArray()),
        ["usage"] = usage,
    };

    public static JsonObject Error(string message, string type, string? param, string? code) => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = message,
            ["type"] = type,
            ["param"] = param,
            ["code"] = code,
        },
    };
}

/// <summary>Range checks shared by the CLI and the HTTP API.</summary>
public static class Validation
{
    public static (string Message, string Param)? Sampling(double temperature, double topP, int topK, int? logprobs, int maxTokens)
    {
        if (double.IsNaN(temperature) || temperature < 0 || temperature > 2) return ($"temperature must be between 0 and 2, got {temperature}", "temperature");
        if (double.IsNaN(topP) || topP <= 0 || topP > 1) return ($"top_p must be in (0, 1], got {topP}", "top_p");
        if (topK < -1) return ($"top_k must be -1 (off), 0 (off) or positive, got {topK}", "top_k");
        if (logprobs is < 0 or > 20) return ($"logprobs must be between 0 and 20, got {logprobs}", "logprobs");
        if (maxTokens < 1) return ($"max_tokens must be at least 1, got {maxTokens}", "max_tokens");
        return null;
    }
}
