using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Grid.Gateway.Hosting;

/// <summary>
/// Keeps the HTTP listener open while the gateway drains. On SIGTERM the host stops its hosted services, Kestrel
/// among them, and a stopped Kestrel refuses new connections: a readiness probe or a late client would see a refused
/// connection instead of 503 <c>server_shutting_down</c>, and only clients holding a pooled connection got the 503.
/// <see cref="StoppingAsync"/> runs before any hosted service stops, so waiting here, until no sequence runs or
/// waits, or <c>Grid:Http:DrainSeconds</c> pass, drains with the port still answering.
/// </summary>
public sealed class DrainBeforeStop(ServingEngine engine, IOptions<GridOptions> options, ILogger<DrainBeforeStop> logger) : IHostedLifecycleService
{
    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        var limit = TimeSpan.FromSeconds(options.Value.Http.DrainSeconds);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool Busy() => engine.Loop is { } loop && loop.RunningCount + loop.WaitingCount > 0;
        try
        {
            while (Busy() && clock.Elapsed < limit) await Task.Delay(100, cancellationToken);
        }
        catch (OperationCanceledException) { }
        logger.LogInformation("drained in {Seconds:F1} s{Left}", clock.Elapsed.TotalSeconds, Busy() ? "; sequences still running are cut off" : "");
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
