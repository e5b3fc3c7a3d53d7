using Grid.Grains.Contracts;
using Grid.Gateway.Orchestration;
using Grid.Grains.Hosting;
using Grid.ModelCore.Config;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The gateway's way into the grid: either an embedded silo in this process that serves attention and every
/// expert group (no cluster configured), or an Orleans client of a cluster (localhost or Redis membership).
/// Owns the Orleans host and exposes the orchestrating <see cref="GridStepExecutor"/>.
/// </summary>
public sealed class GridConnection : IAsyncDisposable
{
    readonly IHost _host;

    public GridStepExecutor Executor { get; }
    /// <summary>Membership as the gateway sees it: interrupts steps waiting on a lost silo; tells /ready what cannot be served.</summary>
    public ClusterWatch Watch { get; }
    /// <summary>The Orleans host's services (its serializer, grain factory).</summary>
    public IServiceProvider Services => _host.Services;
    public GridClusterOptions Cluster { get; }

    GridConnection(IHost host, GridStepExecutor executor, ClusterWatch watch, GridClusterOptions cluster)
    {
        _host = host;
        Executor = executor;
        Watch = watch;
        Cluster = cluster;
    }

    /// <summary>Starts the embedded silo or connects to the cluster, then waits until every shard and group reports its weights loaded.</summary>
    public static async Task<GridConnection> StartAsync(string modelPath, string dtype, GridClusterOptions cluster, ILoggerFactory? loggerFactory,
        Action<string>? status, CancellationToken cancellationToken, SiloOptions? embeddedSilo = null, string? quantization = null)
    {
        var config = ModelConfig.Load(Path.Combine(modelPath, "config.json"));
        if (cluster.IsEmbedded)
        {
            // One silo serves everything; keep the configured group count for the orchestrator's bundling.
            cluster.AttentionShards = Math.Max(1, cluster.AttentionShards);
            if (config.NRoutedExperts > 0 && config.NRoutedExperts % cluster.ExpertGroups != 0) cluster.ExpertGroups = 1;
        }
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        if (loggerFactory is not null) builder.Services.AddSingleton(loggerFactory);
        builder.Logging.AddFilter("Polly", LogLevel.Warning);
        if (cluster.IsEmbedded)
        {
            var cache = embeddedSilo ?? new SiloOptions();
            var silo = new GridOptions
            {
                Model = new ModelOptions { Path = modelPath, Dtype = dtype, Quantization = quantization },
                Cluster = cluster,
                Silo = new SiloOptions
                {
                    CacheBlockSize = cache.CacheBlockSize,
                    KvCacheDtype = cache.KvCacheDtype,
                    CacheMaxBytes = cache.CacheMaxBytes,
                    MemoryUtilization = cache.MemoryUtilization,
                    TorchThreads = cache.TorchThreads,
                    Attention = true,
                    ExpertGroups = config.NRoutedExperts > 0 ? Enumerable.Range(0, cluster.ExpertGroups).ToArray() : [],
                },
            };
            builder.UseOrleans(s => s.UseGridClustering(cluster).AddGridSilo(silo));
        }
        else
        {
            builder.UseOrleansClient(client => client.UseGridClustering(cluster).AddActivityPropagation());
        }
        var host = builder.Build();
        ClusterWatch? watching = null;
        try
        {
            await host.StartAsync(cancellationToken);
            var topology = new GridTopology
            {
                AttentionShards = cluster.AttentionShards,
                ExpertGroups = config.NRoutedExperts > 0 ? cluster.ExpertGroups : 1,
                MaxGroupsPerToken = cluster.MaxGroupsPerToken,
                CallTimeout = TimeSpan.FromSeconds(cluster.CallTimeoutSeconds),
                Lease = TimeSpan.FromSeconds(cluster.LeaseSeconds),
                Exchange = string.Equals(cluster.ExpertExchange, "gateway", StringComparison.OrdinalIgnoreCase) ? ExpertExchange.Gateway : ExpertExchange.Shard,
                WireDtype = cluster.WireDtype.ToLowerInvariant() switch { "float16" => PayloadDtype.Float16, "bfloat16" => PayloadDtype.BFloat16, _ => PayloadDtype.Float32 },
                LayersPerCall = cluster.LayersPerCall,
                GatewaySettle = cluster.Clustering.Equals("embedded", StringComparison.OrdinalIgnoreCase) ? TimeSpan.Zero
                    : TimeSpan.FromSeconds(2 * cluster.GatewayListRefreshSeconds),
            };
            var loggers = loggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance;
            var grains = host.Services.GetRequiredService<IGrainFactory>();
            var watch = watching = new ClusterWatch(grains, loggers.CreateLogger<ClusterWatch>());
            var executor = new GridStepExecutor(grains, config, topology, loggers.CreateLogger<GridStepExecutor>()) { Watch = watch };
            var connection = new GridConnection(host, executor, watch, cluster);
            await connection.WaitReadyAsync(status, cancellationToken);
            return connection;
        }
        catch
        {
            if (watching is not null) await watching.DisposeAsync();
            try { await host.StopAsync(CancellationToken.None); } catch { }
            host.Dispose();
            throw;
        }
    }

    async Task WaitReadyAsync(Action<string>? status, CancellationToken cancellationToken)
    {
        string last = "";
        while (true)
        {
            try
            {
                var (ready, details) = await Executor.GetReadinessAsync(cancellationToken);
                if (ready) return;
                if (details.FirstOrDefault(d => d.Contains("load failed")) is { } failed) throw new InvalidOperationException(failed);
                var line = string.Join("; ", details);
                if (line != last) status?.Invoke("waiting for the grid: " + line);
                last = line;
            }
            catch (Exception e) when (e is not OperationCanceledException and not InvalidOperationException)
            {
                var line = "waiting for the grid: " + e.Message.Split('\n')[0];
                if (line != last) status?.Invoke(line);
                last = line;
            }
            await Task.Delay(250, cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Executor.DisposeAsync();
        await Watch.DisposeAsync();
        try { await _host.StopAsync(CancellationToken.None); } catch { }
        _host.Dispose();
    }
}

/// <summary>An executor that also owns the grid connection it runs on.</summary>
public sealed class OwnedGridExecutor(GridConnection connection) : IStepExecutor
{
    public GridConnection Connection => connection;

    /// <summary>What the cluster cannot serve right now (no live silo for an expert group or for attention); null when all is served.</summary>
    public string? Unservable()
    {
        var watch = connection.Watch;
        if (!watch.AttentionServed) return "no silo in the cluster serves attention";
        var groups = Config.NRoutedExperts > 0 ? watch.UnservableGroups(connection.Cluster.ExpertGroups) : [];
        return groups.Length == 0 ? null
            : $"no silo in the cluster can serve expert group {groups[0]}{(groups.Length > 1 ? $" (nor groups {string.Join(", ", groups[1..])})" : "")}: none declares it and no elastic silo is running";
    }

    public ModelConfig Config => connection.Executor.Config;
    public Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken) => connection.Executor.StepAsync(chunks, cancellationToken);
    public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) => connection.Executor.ReleaseAsync(sequenceIds, cancellationToken);
    public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
        connection.Executor.AttachPrefixAsync(lookups, cancellationToken);
    public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) => connection.Executor.GetBudgetsAsync(cancellationToken);
    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => connection.Executor.GetCacheStatsAsync(cancellationToken);
    public ValueTask DisposeAsync() => connection.DisposeAsync();
}
