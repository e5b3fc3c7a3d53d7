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
    /// <summary>The Orleans host's services (its serializer, grain factory).</summary>
    public IServiceProvider Services => _host.Services;
    public GridClusterOptions Cluster { get; }

    GridConnection(IHost host, GridStepExecutor executor, GridClusterOptions cluster)
    {
        _host = host;
        Executor = executor;
        Cluster = cluster;
    }

    /// <summary>Starts the embedded silo or connects to the cluster, then waits until every shard and group reports its weights loaded.</summary>
    public static async Task<GridConnection> StartAsync(string modelPath, string dtype, GridClusterOptions cluster, ILoggerFactory? loggerFactory,
        Action<string>? status, CancellationToken cancellationToken, SiloOptions? embeddedSilo = null)
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
                Model = new ModelOptions { Path = modelPath, Dtype = dtype },
                Cluster = cluster,
                Silo = new SiloOptions
                {
                    CacheBlockSize = cache.CacheBlockSize,
                    CacheMaxBytes = cache.CacheMaxBytes,
                    TorchThreads = cache.TorchThreads,
                    Attention = true,
                    ExpertGroups = config.NRoutedExperts > 0 ? Enumerable.Range(0, cluster.ExpertGroups).ToArray() : [],
                },
            };
            builder.UseOrleans(s => s.UseGridClustering(cluster).AddGridSilo(silo));
        }
        else
        {
            builder.UseOrleansClient(client => client.UseGridClustering(cluster));
        }
        var host = builder.Build();
        try
        {
            await host.StartAsync(cancellationToken);
            var topology = new GridTopology
            {
                AttentionShards = cluster.AttentionShards,
                ExpertGroups = config.NRoutedExperts > 0 ? cluster.ExpertGroups : 1,
                MaxGroupsPerToken = cluster.MaxGroupsPerToken,
                CallTimeout = TimeSpan.FromSeconds(cluster.CallTimeoutSeconds),
            };
            var executor = new GridStepExecutor(host.Services.GetRequiredService<IGrainFactory>(), config, topology,
                (loggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance).CreateLogger<GridStepExecutor>());
            var connection = new GridConnection(host, executor, cluster);
            await connection.WaitReadyAsync(status, cancellationToken);
            return connection;
        }
        catch
        {
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
        try { await _host.StopAsync(CancellationToken.None); } catch { }
        _host.Dispose();
    }
}

/// <summary>An executor that also owns the grid connection it runs on.</summary>
public sealed class OwnedGridExecutor(GridConnection connection) : IStepExecutor
{
    public ModelConfig Config => connection.Executor.Config;
    public Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken) => connection.Executor.StepAsync(chunks, cancellationToken);
    public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) => connection.Executor.ReleaseAsync(sequenceIds, cancellationToken);
    public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) => connection.Executor.GetBudgetsAsync(cancellationToken);
    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => connection.Executor.GetCacheStatsAsync(cancellationToken);
    public ValueTask DisposeAsync() => connection.DisposeAsync();
}
