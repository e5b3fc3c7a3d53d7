using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>OpenAI response shapes.</summary>
public static class OpenAiJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>A complete (non-streaming) response as <c>application/json</c>.</summary>
    public static Task WriteAsync(HttpResponse response, JsonNode body, CancellationToken cancellationToken)
    {
        response.ContentType = "application/json";
        return response.WriteAsync(body.ToJsonString(Options), cancellationToken);
    }

    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>OpenAI's usage object; <paramref name="cached"/>: prompt tokens served from the prefix cache (prompt_tokens_details.cached_tokens).</summary>
    public static JsonObject Usage(int prompt, int completion, int cached = 0) => new()
    {
        ["prompt_tokens"] = prompt,
        ["completion_tokens"] = completion,
        ["total_tokens"] = prompt + completion,
        ["prompt_tokens_details"] = new JsonObject { ["cached_tokens"] = Math.Clamp(cached, 0, prompt) },
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
