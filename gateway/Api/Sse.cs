using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>Server-sent events as OpenAI streams them: <c>data: {json}</c> chunks, then <c>data: [DONE]</c>.</summary>
public static class Sse
{
    public static async Task StartAsync(HttpResponse response, CancellationToken cancellationToken)
    {
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        await response.Body.FlushAsync(cancellationToken);
    }

    public static async Task WriteAsync(HttpResponse response, JsonNode data, CancellationToken cancellationToken)
    {
        await response.WriteAsync("data: " + data.ToJsonString(OpenAiJson.Options) + "\n\n", cancellationToken);
        await response.Body.FlushAsync(cancellationToken);
    }

    public static async Task DoneAsync(HttpResponse response, CancellationToken cancellationToken)
    {
        await response.WriteAsync("data: [DONE]\n\n", cancellationToken);
        await response.Body.FlushAsync(cancellationToken);
    }
}
