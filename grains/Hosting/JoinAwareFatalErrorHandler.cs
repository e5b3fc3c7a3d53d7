using Grid.Configuration;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace Grid.Grains.Hosting;

/// <summary>
/// Orleans' fatal-error handling (log, then <see cref="Environment.FailFast(string)"/>: a silo the cluster declared dead
/// must stop at once), plus one clear <c>error: ...</c> line on stderr when that happens before this silo ever became
/// Active: the cluster's silos could not reach it while it was joining, which is what a silo without a certificate
/// from the cluster CA sees when the cluster runs TLS (the silos refuse its connections and vote it dead).
/// </summary>
public sealed class JoinAwareFatalErrorHandler(GridClusterOptions cluster, ILogger<JoinAwareFatalErrorHandler> logger)
    : IFatalErrorHandler, ILifecycleParticipant<ISiloLifecycle>
{
    volatile bool _active;

    public bool IsUnexpected(Exception exception) => true;

    public void OnFatalException(object? sender = null, string? context = null, Exception? exception = null)
    {
        var what = $"Fatal error from {sender}: {context} {exception}";
        if (!_active)
            Console.Error.WriteLine("error: silo did not start: " + SiloStartFailure.JoinFailure(cluster,
                "the cluster declared this silo dead while it was joining (its silos could not reach it)"));
        logger.LogCritical("{What}", what);
        Environment.FailFast(what, exception);
    }

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(JoinAwareFatalErrorHandler), ServiceLifecycleStage.Active, _ =>
        {
            _active = true;
            return Task.CompletedTask;
        });
}
