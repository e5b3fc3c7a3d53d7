using System.Diagnostics.Metrics;
using Grid.ModelCore.Cache;

namespace Grid.Grains.Hosting;

/// <summary>
/// The silo's OpenTelemetry instruments (meter <c>Grid.Silo</c>): latent cache occupancy of this silo's
/// attention shards, and the work its expert groups and attention shards do.
/// </summary>
public sealed class SiloTelemetry : IDisposable
{
    public const string Name = "Grid.Silo";

    readonly Meter _meter = new(Name);
    long _cacheTokens, _cacheBytes, _cacheReserved, _cacheSequences, _cacheBudget;
    double _cacheUsage;

    public Counter<long> ExpertTokens { get; }
    public Counter<long> ExpertCalls { get; }
    public Histogram<double> ComputeMs { get; }
    /// <summary>Counts sequences whose caches a shard freed because their gateway's lease expired.</summary>
    public void CachesReclaimed(long freed) => Interlocked.Add(ref _cachesReclaimed, freed);
    long _cachesReclaimed;
    public void CachesRewound(long rewound) => Interlocked.Add(ref _cachesRewound, rewound);
    long _cachesRewound;

    public SiloTelemetry()
    {
        _meter.CreateObservableGauge("grid_silo_latent_cache_tokens", () => Interlocked.Read(ref _cacheTokens), description: "Tokens in this silo's MLA latent cache");
        _meter.CreateObservableGauge("grid_silo_latent_cache_bytes", () => Interlocked.Read(ref _cacheBytes), unit: "By", description: "Latent cache bytes held by live sequences on this silo");
        _meter.CreateObservableGauge("grid_silo_latent_cache_reserved_bytes", () => Interlocked.Read(ref _cacheReserved), unit: "By", description: "Latent cache pool bytes reserved on this silo");
        _meter.CreateObservableGauge("grid_silo_latent_cache_budget_bytes", () => Interlocked.Read(ref _cacheBudget), unit: "By", description: "Latent cache budget of this silo (the pools grow to it on demand)");
        _meter.CreateObservableGauge("grid_silo_latent_cache_usage_ratio", () => Volatile.Read(ref _cacheUsage), description: "Latent-cache blocks in use over the budget's blocks on this silo, 0..1");
        _meter.CreateObservableGauge("grid_silo_sequences", () => Interlocked.Read(ref _cacheSequences), description: "Sequences whose latent cache lives on this silo");
        ExpertTokens = _meter.CreateCounter<long>("grid_expert_tokens", description: "Token rows routed into this silo's expert groups, by group");
        ExpertCalls = _meter.CreateCounter<long>("grid_expert_calls", description: "Expert-group calls served, by group");
        // Observable: exported (as 0) from the first scrape, not only once a gateway died.
        _meter.CreateObservableCounter("grid_silo_caches_rewound", () => Interlocked.Read(ref _cachesRewound), description: "Latent caches taken back to a step's position because the gateway ran that step again (another shard of it failed after this one committed)");
        _meter.CreateObservableCounter("grid_silo_caches_reclaimed", () => Interlocked.Read(ref _cachesReclaimed), description: "Latent caches freed because their gateway's lease expired (a gateway that died)");
        ComputeMs = _meter.CreateHistogram<double>("grid_silo_compute_ms", unit: "ms", description: "Tensor work per grain call on the inference thread, by kind");
    }

    /// <summary>Takes a snapshot of the cache (call on the inference thread).</summary>
    public void Observe(LatentCache cache)
    {
        Interlocked.Exchange(ref _cacheTokens, cache.TokensCached);
        Interlocked.Exchange(ref _cacheBytes, cache.BytesInUse);
        Interlocked.Exchange(ref _cacheReserved, cache.BytesReserved);
        Interlocked.Exchange(ref _cacheSequences, cache.LiveSequences);
        Interlocked.Exchange(ref _cacheBudget, cache.MaxBlocks * cache.BytesPerBlock);
        Volatile.Write(ref _cacheUsage, (double)cache.BlocksInUse / cache.MaxBlocks);
    }

    public void Dispose() => _meter.Dispose();
}
