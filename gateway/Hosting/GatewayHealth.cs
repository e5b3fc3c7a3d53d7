using Grid.Gateway.Api;
using Grid.Grains.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The gateway's probes as ASP.NET Core health checks: <c>/health</c> (liveness: tag <c>live</c>, the process
/// answers) and <c>/ready</c> (readiness: tag <c>ready</c>, <see cref="GatewayReadyCheck"/>). Both keep their bodies:
/// <c>{"status":"ok"}</c>, <c>{"status":"ready","model":...}</c>, and a 503 in OpenAI's error JSON whose code says why
/// (<c>model_not_ready</c>, <c>server_shutting_down</c>, <c>expert_group_unavailable</c>, <c>model_part_unavailable</c>).
/// Probes log only when their status changes (<see cref="HealthTransitionLog"/>), not once per poll.
/// </summary>
public static class GatewayHealth
{
    public const string Live = "live", Ready = "ready";

    public static void Add(IServiceCollection services) => HealthTransitionLog.Add(services).AddHealthChecks()
        .AddCheck("process", () => HealthCheckResult.Healthy("the gateway answers"), tags: [Live])
        .AddCheck<GatewayReadyCheck>("serving", tags: [Ready]);

    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapHealthChecks("/health", new HealthCheckOptions
        {
            Predicate = c => c.Tags.Contains(Live),
            ResponseWriter = (context, report) =>
            {
                context.RequestServices.GetRequiredService<HealthTransitionLog>().Observe("/health", report);
                return context.Response.WriteAsJsonAsync(new { status = "ok" }, context.RequestAborted);
            },
        });
        app.MapHealthChecks("/ready", new HealthCheckOptions { Predicate = c => c.Tags.Contains(Ready), ResponseWriter = WriteReadyAsync });
    }

    static Task WriteReadyAsync(HttpContext context, HealthReport report)
    {
        context.RequestServices.GetRequiredService<HealthTransitionLog>().Observe("/ready", report);
        if (report.Status == HealthStatus.Healthy)
            return context.Response.WriteAsJsonAsync(new { status = "ready", model = context.RequestServices.GetRequiredService<ServingEngine>().ModelName },
                context.RequestAborted);
        var failed = report.Entries.Values.First(e => e.Status != HealthStatus.Healthy);
        var code = failed.Data.TryGetValue("code", out var c) ? c as string : null;
        return OpenAiErrors.WriteAsync(context, new ApiException(503, failed.Description ?? "not ready", null, code ?? "not_ready", OpenAiErrors.Unavailable),
            context.RequestAborted);
    }
}

/// <summary>
/// Ready to serve: the model is loaded, the server is not draining, and cluster membership shows a live silo for
/// every expert group and for attention (<see cref="OwnedGridExecutor.Unservable"/>, fed by <c>ClusterWatch</c>).
/// Unhealthy results carry the OpenAI error code in their data (<c>code</c>).
/// </summary>
public sealed class GatewayReadyCheck(ServingEngine engine) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (!engine.Ready)
            return Unhealthy(engine.LoadError is { } e ? $"the model failed to load: {e}" : "the model is still loading", "model_not_ready");
        if (engine.Draining)
            return Unhealthy("the server is shutting down", "server_shutting_down");
        // Membership says a part of the model has no live silo: not ready (Kubernetes stops routing here), naming it.
        if (engine.Executor is OwnedGridExecutor grid && grid.Unservable() is { } missing)
            return Unhealthy(missing, OpenAiErrors.UnavailablePartCode(missing));
        return Task.FromResult(HealthCheckResult.Healthy($"serving {engine.ModelName}"));
    }

    static Task<HealthCheckResult> Unhealthy(string message, string code) =>
        Task.FromResult(HealthCheckResult.Unhealthy(message, data: new Dictionary<string, object> { ["code"] = code }));
}
