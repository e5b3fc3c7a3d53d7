using System.Collections.Concurrent;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;

namespace Grid.Grains.Hosting;

/// <summary>
/// Quiet probes. ASP.NET Core's health-check service logs every unhealthy probe at Error
/// (<c>DefaultHealthCheckService[103]</c>), so a Kubernetes readiness probe polling a loading or draining process fills
/// the log with one line per poll. <see cref="Quiet"/> mutes that category (only Critical passes) and the probes' response
/// writers call <see cref="Observe"/>, which writes one structured line when a probe's status changes (the first answer
/// included): Information when it turns healthy, Warning otherwise, naming the failing checks and why.
/// </summary>
public sealed class HealthTransitionLog(ILogger<HealthTransitionLog> logger)
{
    /// <summary>The category the health-check service logs each probe under.</summary>
    public const string HealthCheckServiceCategory = "Microsoft.Extensions.Diagnostics.HealthChecks.DefaultHealthCheckService";

    readonly ConcurrentDictionary<string, HealthStatus> _last = new();

    /// <summary>Mutes the per-probe lines of the health-check service.</summary>
    public static ILoggingBuilder Quiet(ILoggingBuilder logging) => logging.AddFilter(HealthCheckServiceCategory, LogLevel.Critical);

    /// <summary>Registers the log (a singleton) and mutes the health-check service's per-probe lines.</summary>
    public static IServiceCollection Add(IServiceCollection services) =>
        services.AddSingleton<HealthTransitionLog>().AddLogging(l => Quiet(l));

    /// <summary>Records <paramref name="probe"/>'s answer; logs one line if its status differs from the last answer's.</summary>
    public void Observe(string probe, HealthReport report)
    {
        var status = report.Status;
        bool changed = false;
        _last.AddOrUpdate(probe, _ => { changed = true; return status; }, (_, old) => { changed = old != status; return status; });
        if (!changed) return;
        if (status == HealthStatus.Healthy)
        {
            logger.LogInformation("Probe {Probe} is now {Status}", probe, status);
            return;
        }
        var failing = report.Entries.Where(e => e.Value.Status != HealthStatus.Healthy)
            .Select(e => $"{e.Key}: {e.Value.Description ?? e.Value.Exception?.Message ?? e.Value.Status.ToString()}");
        logger.LogWarning(report.Entries.Values.FirstOrDefault(e => e.Exception is not null).Exception,
            "Probe {Probe} is now {Status}: {Failing}", probe, status, string.Join("; ", failing));
    }
}
