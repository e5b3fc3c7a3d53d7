using Grid.Gateway.Scheduling;
using Grid.ModelCore.Serving;
using System.Diagnostics;
using Grid.Gateway.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Grid.Gateway.Api;

/// <summary>What a generation endpoint needs per request, and the error handling they share.</summary>
public sealed class ApiContext
{
    public required HttpContext Http { get; init; }
    public required ServingEngine Engine { get; init; }
    public required GridTelemetry Telemetry { get; init; }
    public required GridOptions Options { get; init; }
    public required ILogger Logger { get; init; }
    /// <summary>The client went away or the server is stopping.</summary>
    public required CancellationToken Aborted { get; init; }
    public long StartTimestamp { get; } = Stopwatch.GetTimestamp();
    /// <summary>Silence after which a stream writes an SSE keep-alive comment (Grid:Http:KeepAliveSeconds; zero = off).</summary>
    public TimeSpan KeepAlive => TimeSpan.FromSeconds(Options.Http.KeepAliveSeconds);
    /// <summary>The clock keep-alives run on (the registered TimeProvider, else the system's).</summary>
    public TimeProvider Time => Http.RequestServices.GetService<TimeProvider>() ?? TimeProvider.System;
    public string RequestId { get; } = Guid.NewGuid().ToString("N")[..24];

    /// <summary>Runs a generation endpoint: 503 until the model is loaded, OpenAI error JSON for every refusal.</summary>
    public static async Task RunAsync(HttpContext http, string endpoint, Func<ApiContext, Task> handler)
    {
        var services = http.RequestServices;
        // Not linked to the host stopping: a draining server lets running streams finish (Grid:Http:DrainSeconds).
        using var aborted = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        var ctx = new ApiContext
        {
            Http = http,
            Engine = services.GetRequiredService<ServingEngine>(),
            Telemetry = services.GetRequiredService<GridTelemetry>(),
            Options = services.GetRequiredService<IOptions<GridOptions>>().Value,
            Logger = services.GetRequiredService<ILoggerFactory>().CreateLogger("Grid.Gateway.Api"),
            Aborted = aborted.Token,
        };
        using var activity = GridTelemetry.ActivitySource.StartActivity(endpoint, ActivityKind.Server);
        activity?.SetTag("grid.request_id", ctx.RequestId);
        // The status the request ended with: a stream that fails after its 200 header is counted by its error.
        int? failed = null;
        try
        {
            if (!ctx.Engine.Ready)
                throw new ApiException(503, ctx.Engine.LoadError is { } err ? $"the model failed to load: {err}" : "the model is still loading; retry when /ready answers 200",
                    null, "model_not_ready", OpenAiErrors.Unavailable);
            if (ctx.Engine.Draining)
                throw new ApiException(503, "the server is shutting down; send the request to another replica", null, "server_shutting_down", OpenAiErrors.Unavailable);
            if (ctx.Engine.Executor is OwnedGridExecutor grid && grid.Unservable() is { } missing)
                throw new ModelPartUnavailableException(missing);
            await handler(ctx);
            ctx.Telemetry.RequestDuration.Record(Stopwatch.GetElapsedTime(ctx.StartTimestamp).TotalSeconds, new KeyValuePair<string, object?>("endpoint", endpoint));
        }
        catch (Exception e) when (e is ModelPartUnavailableException || e.InnerException is ModelPartUnavailableException)
        {
            // Nothing in the cluster can serve a part of the model the request needs: 503, naming the part.
            var cause = e as ModelPartUnavailableException ?? (ModelPartUnavailableException)e.InnerException!;
            activity?.SetStatus(ActivityStatusCode.Error, cause.Message);
            ctx.Logger.LogWarning("request {RequestId} to {Endpoint} failed: {Message}", ctx.RequestId, endpoint, cause.Message);
            var error = new ApiException(503, cause.Message, null,
                OpenAiErrors.UnavailablePartCode(cause.Message), OpenAiErrors.Unavailable);
            failed = 503;
            if (!http.Response.HasStarted) await OpenAiErrors.WriteAsync(http, error, CancellationToken.None);
            else await TryWriteStreamErrorAsync(http, error);
        }
        catch (Exception e) when (e is QueueFullException || e.InnerException is QueueFullException)
        {
            // At capacity: OpenAI's rate-limit error and a hint when to come back.
            var full = e as QueueFullException ?? (QueueFullException)e.InnerException!;
            failed = 429;
            ctx.Telemetry.Rejected();
            ctx.Logger.LogInformation("request {RequestId} to {Endpoint} refused: 429 {Message}", ctx.RequestId, endpoint, full.Message);
            var error = new ApiException(429, full.Message, null, "rate_limit_exceeded", OpenAiErrors.RateLimit);
            if (!http.Response.HasStarted)
            {
                http.Response.Headers.RetryAfter = full.RetryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
                await OpenAiErrors.WriteAsync(http, error, CancellationToken.None);
            }
            else await TryWriteStreamErrorAsync(http, error);
        }
        catch (ApiException e)
        {
            failed = e.Status;
            activity?.SetStatus(ActivityStatusCode.Error, e.Message);
            ctx.Logger.LogInformation("request {RequestId} to {Endpoint} refused: {Status} {Code} {Param}: {Message}", ctx.RequestId, endpoint, e.Status, e.Code, e.Param, e.Message);
            if (!http.Response.HasStarted) await OpenAiErrors.WriteAsync(http, e, CancellationToken.None);
            else await TryWriteStreamErrorAsync(http, e);
        }
        catch (OperationCanceledException) when (ctx.Aborted.IsCancellationRequested)
        {
            activity?.SetTag("grid.cancelled", true);
            ctx.Logger.LogInformation("request {RequestId} to {Endpoint} cancelled (client disconnected or server stopping)", ctx.RequestId, endpoint);
        }
        catch (Exception e)
        {
            activity?.SetStatus(ActivityStatusCode.Error, e.Message);
            ctx.Logger.LogError(e, "request {RequestId} to {Endpoint} failed", ctx.RequestId, endpoint);
            var error = new ApiException(500, "generation failed: " + e.Message, null, "internal_error", OpenAiErrors.Server);
            failed = 500;
            if (!http.Response.HasStarted) await OpenAiErrors.WriteAsync(http, error, CancellationToken.None);
            else await TryWriteStreamErrorAsync(http, error);
        }
        finally
        {
            ctx.Telemetry.Requests.Add(1, new KeyValuePair<string, object?>("endpoint", endpoint),
                new KeyValuePair<string, object?>("status", failed ?? http.Response.StatusCode));
        }
    }

    static async Task TryWriteStreamErrorAsync(HttpContext http, ApiException e)
    {
        try { await Sse.WriteAsync(http.Response, OpenAiErrors.Json(e), http.RequestAborted); }
        catch (Exception) when (http.RequestAborted.IsCancellationRequested) { }
        catch (IOException) { }
    }
}
