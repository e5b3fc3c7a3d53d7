using Grid.Grains.Contracts;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Orchestration;

/// <summary>
/// The gateway's view of the cluster's membership: polls <see cref="IClusterViewGrain"/> (answered by whichever silo
/// the gateway reaches) and raises <see cref="SiloLost"/> as soon as membership declares a silo dead or it leaves,
/// so steps waiting on that silo are interrupted at once instead of after the call timeout. Also answers which parts
/// of the model no live silo can serve (for /ready and for failing fast with 503).
/// </summary>
public sealed class ClusterWatch : IAsyncDisposable
{
    readonly IGrainFactory _grains;
    readonly ILogger _logger;
    readonly TimeSpan _period;
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;
    readonly TaskCompletionSource _firstView = new(TaskCreationOptions.RunContinuationsAsynchronously);
    volatile SiloView[] _silos = [];
    readonly HashSet<string> _lost = new();

    /// <summary>A silo was declared dead or left; the argument is its address.</summary>
    public event Action<string>? SiloLost;

    /// <summary>Silos seen in the last poll (every status).</summary>
    public IReadOnlyList<SiloView> Silos => _silos;

    /// <summary>When a silo was last seen declared dead or leaving (null: never). Written by the poll, read by steps.</summary>
    public DateTimeOffset? LastLoss => Interlocked.Read(ref _lastLossTicks) is var t and > 0 ? new DateTimeOffset(t, TimeSpan.Zero) : null;
    long _lastLossTicks;

    /// <summary>When the last poll answered.</summary>
    public DateTimeOffset LastAnswer { get; private set; }

    public ClusterWatch(IGrainFactory grains, ILogger logger, TimeSpan? period = null)
    {
        _grains = grains;
        _logger = logger;
        _period = period ?? TimeSpan.FromMilliseconds(500);
        _loop = Task.Run(RunAsync);
    }

    /// <summary>Completes once the first view arrived (or <paramref name="cancellationToken"/> fires).</summary>
    public Task FirstViewAsync(CancellationToken cancellationToken) => _firstView.Task.WaitAsync(cancellationToken);

    async Task RunAsync()
    {
        // Twice a second, for the gateway's whole life: not traced (it would bury the requests' traces).
        System.Diagnostics.Activity.Current = null;
        using var untraced = OpenTelemetry.SuppressInstrumentationScope.Begin();
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
                deadline.CancelAfter(TimeSpan.FromSeconds(5));
                var view = await _grains.GetGrain<IClusterViewGrain>(0).GetSilosAsync(deadline.Token).WaitAsync(deadline.Token);
                Apply(view);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                _logger.LogDebug("cluster view unavailable: {Error}", e.Message);
            }
            try { await Task.Delay(_period, ct); }
            catch (OperationCanceledException) { return; }
        }
    }

    void Apply(SiloView[] view)
    {
        var before = _silos;
        _silos = view;
        LastAnswer = DateTimeOffset.UtcNow;
        _firstView.TrySetResult();
        var active = view.Where(s => s.Active).Select(s => s.Address).ToHashSet();
        var gone = before.Where(s => s.Active && !active.Contains(s.Address)).Select(s => s.Address)
            .Concat(view.Where(s => s.Status == "Dead").Select(s => s.Address))
            .Distinct().ToList();
        foreach (var silo in gone)
        {
            lock (_lost) if (!_lost.Add(silo)) continue;
            Interlocked.Exchange(ref _lastLossTicks, DateTimeOffset.UtcNow.UtcTicks);
            _logger.LogWarning("silo {Silo} left the cluster (membership); interrupting steps that wait on it", silo);
            SiloLost?.Invoke(silo);
        }
    }

    /// <summary>
    /// Expert groups (of <paramref name="groups"/>) that no active silo declares while no elastic silo runs; empty
    /// before the first view (nothing known yet).
    /// </summary>
    public int[] UnservableGroups(int groups)
    {
        var silos = _silos.Where(s => s.Active).ToArray();
        if (silos.Length == 0 || silos.Any(s => s.Elastic)) return [];
        return Enumerable.Range(0, groups).Where(g => !silos.Any(s => s.ExpertGroups.Contains(g))).ToArray();
    }

    /// <summary>Whether some active silo serves attention (true before the first view).</summary>
    public bool AttentionServed => _silos.Length == 0 || _silos.Any(s => s.Active && s.Attention);

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try { await _loop; } catch (OperationCanceledException) { }
        _stop.Dispose();
    }
}
