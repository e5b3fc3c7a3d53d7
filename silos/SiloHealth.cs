using System.Text.Json;
using Grid.Grains.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Orleans.Runtime;

namespace Grid.Silos;

/// <summary>
/// The silo's probes (ASP.NET Core health checks on the metrics port): <c>/health</c> runs the checks tagged
/// <c>live</c> (the process answers and its model part did not fail to load: a failed load needs a restart),
/// <c>/ready</c> those tagged <c>ready</c> (an Active member of the cluster with its model part loaded). 200 when
/// healthy, 503 otherwise, with a JSON body naming each check's status and why.
/// </summary>
public static class SiloHealth
{
    public const string Live = "live", Ready = "ready";

    public static void Add(IServiceCollection services) => HealthTransitionLog.Add(services).AddHealthChecks()
        .AddCheck<ModelLoadCheck>("model_load", tags: [Live])
        .AddCheck<ModelLoadedCheck>("model_part", tags: [Ready])
        .AddCheck<MembershipCheck>("membership", tags: [Ready]);

    public static void Map(WebApplication app)
    {
        app.MapHealthChecks("/health", new HealthCheckOptions { Predicate = c => c.Tags.Contains(Live), ResponseWriter = (c, r) => WriteAsync("/health", c, r) });
        app.MapHealthChecks("/ready", new HealthCheckOptions { Predicate = c => c.Tags.Contains(Ready), ResponseWriter = (c, r) => WriteAsync("/ready", c, r) });
    }

    /// <summary><c>{"status":"healthy","checks":{"membership":{"status":"healthy","description":"..."}}}</c>; a status change is logged once.</summary>
    static Task WriteAsync(string probe, HttpContext context, HealthReport report)
    {
        context.RequestServices.GetRequiredService<HealthTransitionLog>().Observe(probe, report);
        context.Response.ContentType = "application/json";
        var body = new Dictionary<string, object?>
        {
            ["status"] = report.Status.ToString().ToLowerInvariant(),
            ["checks"] = report.Entries.ToDictionary(e => e.Key, e => new Dictionary<string, object?>
            {
                ["status"] = e.Value.Status.ToString().ToLowerInvariant(),
                ["description"] = e.Value.Description,
            }),
        };
        return context.Response.WriteAsync(JsonSerializer.Serialize(body), context.RequestAborted);
    }
}

/// <summary>Liveness: unhealthy once loading the model part failed (the silo cannot recover without a restart).</summary>
sealed class ModelLoadCheck(ModelHost model) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(model.LoadError is { } e ? HealthCheckResult.Unhealthy("loading the model part failed: " + e.Message) : HealthCheckResult.Healthy(model.Detail));
}

/// <summary>Readiness: the weights of the expert groups and attention this silo declares are loaded.</summary>
sealed class ModelLoadedCheck(ModelHost model) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(model.IsReady ? HealthCheckResult.Healthy(model.Detail) : HealthCheckResult.Unhealthy("model part not loaded: " + model.Detail));
}

/// <summary>Readiness: this silo is an Active member of the cluster (joined, not shutting down, not declared dead).</summary>
sealed class MembershipCheck(IClusterMembershipService membership, ILocalSiloDetails local) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var status = membership.CurrentSnapshot.GetSiloStatus(local.SiloAddress);
        return Task.FromResult(status == SiloStatus.Active
            ? HealthCheckResult.Healthy($"{local.SiloAddress} is an active cluster member")
            : HealthCheckResult.Unhealthy($"{local.SiloAddress} is {status} in the cluster membership, not Active"));
    }
}
