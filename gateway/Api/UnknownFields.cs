using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Api;

/// <summary>
/// The policy for request fields this server does not know (as vLLM): they are ignored, never an error, so that clients
/// sending newer OpenAI fields keep working. Each request that has some logs them (Warning, with the request id) and
/// names them in the response header <see cref="Header"/>. Only top-level fields are checked.
/// </summary>
public static class UnknownFields
{
    public const string Header = "Grid-Ignored-Fields";

    /// <summary>Fields that every generation endpoint reads (<see cref="SamplingRequest"/>).</summary>
    public static readonly IReadOnlySet<string> Sampling = new HashSet<string>(StringComparer.Ordinal)
    {
        "model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos", "n", "best_of",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "min_p", "min_tokens", "user", "stream", "stream_options",
        "return_tokens_as_token_ids",
    };

    /// <summary><c>/v1/completions</c>'s fields.</summary>
    public static readonly IReadOnlySet<string> Completions = new HashSet<string>(Sampling, StringComparer.Ordinal)
    {
        "prompt", "logprobs", "echo", "suffix", "response_format",
    };

    /// <summary><c>/v1/chat/completions</c>'s fields.</summary>
    public static readonly IReadOnlySet<string> Chat = new HashSet<string>(Sampling, StringComparer.Ordinal)
    {
        "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "functions", "tool_choice", "response_format",
        "add_generation_prompt",
    };

    /// <summary>The body's top-level fields not in <paramref name="known"/>, in body order.</summary>
    public static IReadOnlyList<string> Find(JsonElement body, IReadOnlySet<string> known) =>
        body.EnumerateObject().Select(p => p.Name).Where(n => !known.Contains(n)).Distinct(StringComparer.Ordinal).ToArray();

    /// <summary>Logs the ignored fields and names them in the response header (before the response starts).</summary>
    public static void Report(ApiContext ctx, JsonElement body, IReadOnlySet<string> known)
    {
        var ignored = Find(body, known);
        if (ignored.Count == 0) return;
        // Names are client text: keep the header to printable ASCII and a bounded length.
        var list = string.Join(",", ignored.Select(n => new string(n.Where(c => c is > ' ' and < (char)127 and not ',').ToArray())).Where(n => n.Length > 0));
        if (list.Length > 1024) list = list[..1024];
        ctx.Logger.LogWarning("request {RequestId}: ignoring unknown field(s): {Fields}", ctx.RequestId, list);
        if (!ctx.Http.Response.HasStarted && list.Length > 0) ctx.Http.Response.Headers[Header] = list;
    }
}
