using System.Diagnostics;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Serving;
using Grid.ModelCore.Tokenization;
using Grid.ModelCore.Weights;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The one place that creates the model executor. Resolves the model folder, loads the tokenizer, creates the
/// <see cref="IStepExecutor"/> and the <see cref="EngineLoop"/> (planner + engine), in the background once the host has started
/// (so /health answers at once and /ready turns 200 when the weights are loaded).
/// </summary>
public sealed class ServingEngine : IHostedService, IAsyncDisposable
{
    readonly GridOptions _options;
    readonly ILogger<ServingEngine> _logger;
    readonly ILoggerFactory _loggers;
    readonly IHostApplicationLifetime _lifetime;
    readonly CancellationTokenSource _stopping = new();
    readonly object _statsLock = new();
    Task? _loading;
    int _statsRefreshing, _statsDirty;
    volatile bool _ready;
    CacheStats _cacheStats;

    public ServingEngine(IOptions<GridOptions> options, ILogger<ServingEngine> logger, ILoggerFactory loggers, IHostApplicationLifetime lifetime)
    {
        _options = options.Value;
        _logger = logger;
        _loggers = loggers;
        _lifetime = lifetime;
        lifetime.ApplicationStopping.Register(() =>
        {
            _draining = true;
            _logger.LogInformation("draining: /ready and new requests answer 503; {Running} running and {Waiting} waiting sequences get {Seconds} s to finish",
                Loop?.RunningCount ?? 0, Loop?.WaitingCount ?? 0, _options.Http.DrainSeconds);
        });
        // A given folder is checked at once; the built-in checkpoint is created (if missing) in the background load.
        if (!string.IsNullOrEmpty(_options.Model.Path)) ModelDirectory = EngineFactory.ResolveModel(_options.Model.Path);
        var names = _options.Model.ServedNames();
        ServedNames = names.Count > 0 ? names : [EngineFactory.ModelName(_options.Model.Path, ModelDirectory ?? "")];
        // A missing chat template file fails at start, before the port opens.
        if (!string.IsNullOrEmpty(_options.Model.ChatTemplate) && !File.Exists(_options.Model.ChatTemplate))
            throw new FileNotFoundException($"Grid:Model:ChatTemplate (--chat-template): {_options.Model.ChatTemplate} does not exist", _options.Model.ChatTemplate);
    }

    public string? ModelDirectory { get; private set; }
    /// <summary>The name responses report: the first served name.</summary>
    public string ModelName => ServedNames[0];
    /// <summary>Every name requests may use (<c>--served-model-name a b</c>), listed by /v1/models.</summary>
    public IReadOnlyList<string> ServedNames { get; }
    /// <summary>Whether <paramref name="name"/> is one of <see cref="ServedNames"/>.</summary>
    public bool Serves(string name) => ServedNames.Contains(name, StringComparer.Ordinal);
    /// <summary>Sampling defaults from the checkpoint's generation_config.json (Grid:Model:GenerationConfig); a request's fields win.</summary>
    public Grid.ModelCore.Sampling.GenerationDefaults GenerationDefaults { get; private set; } = Grid.ModelCore.Sampling.GenerationDefaults.None;
    public bool Ready => _ready;
    /// <summary>The host is stopping: running streams finish, nothing new is admitted.</summary>
    public bool Draining => _draining;
    volatile bool _draining;
    public string? LoadError { get; private set; }
    public GridTokenizer? Tokenizer { get; private set; }
    public IStepExecutor? Executor { get; private set; }
    public EngineLoop? Loop { get; private set; }
    /// <summary>Tokens the model may see: prompt plus generated (max_position_embeddings, capped by Grid:Model:MaxModelLen).</summary>
    public int ContextLength { get; private set; }
    public int VocabSize { get; private set; }
    public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;
    /// <summary>Latent cache occupancy as of the last step or release (for gauges, which must not block).</summary>
    public CacheStats CacheStats { get { lock (_statsLock) return _cacheStats; } }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _loading = Task.Run(() => LoadAsync(_stopping.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    async Task LoadAsync(CancellationToken cancellationToken)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            ModelDirectory ??= EngineFactory.ResolveModel(null, m => _logger.LogInformation("{Message}", m));
            _logger.LogInformation("loading model {Model} from {Directory}", ModelName, ModelDirectory);
            Tokenizer = EngineFactory.LoadTokenizer(ModelDirectory, _options.Model.ChatTemplate);
            GenerationDefaults = Grid.ModelCore.Sampling.GenerationDefaults.Load(_options.Model.GenerationConfig, ModelDirectory);
            if (GenerationDefaults != Grid.ModelCore.Sampling.GenerationDefaults.None)
                _logger.LogInformation("sampling defaults from generation_config.json (a request's own fields win): {@Defaults}", GenerationDefaults);
            var executor = await CreateExecutorAsync(cancellationToken);
            Executor = executor;
            var config = executor.Config;
            VocabSize = config.VocabSize;
            ContextLength = _options.Model.MaxModelLen > 0 ? Math.Min(_options.Model.MaxModelLen, config.MaxPositionEmbeddings) : config.MaxPositionEmbeddings;
            var scheduler = new EngineLoop(executor, _options.Scheduler, _loggers.CreateLogger<EngineLoop>(), ContextLength,
                recovery: TimeSpan.FromSeconds(_options.Cluster.RecoverySeconds));
            scheduler.StepCompleted += _ => RefreshCacheStats();
            scheduler.SequenceReleased += _ => RefreshCacheStats();
            Loop = scheduler;
            _ready = true;
            _logger.LogInformation("model {Model} ready in {Seconds:F1} s: context {Context} tokens, vocab {Vocab}, scheduler {@Scheduler}",
                ModelName, sw.Elapsed.TotalSeconds, ContextLength, VocabSize, _options.Scheduler);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            LoadError = e.Message;
            _logger.LogCritical(e, "loading model {Model} failed; stopping", ModelName);
            Environment.ExitCode = 1;
            _lifetime.StopApplication();
        }
    }

    /// <summary>
    /// Creates the step executor: by default the Orleans grid (an embedded silo in this process, or the cluster
    /// Grid:Cluster configures); Grid:Model:Engine=local runs model-core in process without Orleans.
    /// </summary>
    async Task<IStepExecutor> CreateExecutorAsync(CancellationToken cancellationToken)
    {
        return await EngineFactory.CreateExecutorAsync(_options.Model.Engine, ModelDirectory!, _options.Model.Dtype, _options.Cluster, _loggers, p =>
        {
            _logger.LogInformation("loading weights: {Done}/{Total} tensors, {MiBDone}/{MiBTotal} MiB",
                p.TensorsDone, p.TensorsTotal, p.BytesDone >> 20, p.BytesTotal >> 20);
        }, status => _logger.LogInformation("{Status}", status), cancellationToken, _options.Silo, _options.Model.Quantization);
    }

    /// <summary>Queries the executor for cache occupancy and keeps the newest answer (never blocks the caller).</summary>
    public void RefreshCacheStats()
    {
        var executor = Executor;
        if (executor is null) return;
        // Single flight: at most one stats query is outstanding (in the grid it is a grain call that would otherwise
        // queue between the steps of the hot path); requests made meanwhile are folded into one trailing query.
        Volatile.Write(ref _statsDirty, 1);
        if (Interlocked.CompareExchange(ref _statsRefreshing, 1, 0) == 0) _ = RefreshLoopAsync(executor);
    }

    async Task RefreshLoopAsync(IStepExecutor executor)
    {
        try
        {
            while (Interlocked.Exchange(ref _statsDirty, 0) == 1)
            {
                try
                {
                    var stats = await executor.GetCacheStatsAsync(_stopping.Token);
                    lock (_statsLock) _cacheStats = stats;
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
                catch (Exception e) { _logger.LogWarning(e, "reading latent cache stats failed"); }
            }
        }
        finally
        {
            Volatile.Write(ref _statsRefreshing, 0);
            // A request that arrived between the last check and the release above still gets its query.
            if (Volatile.Read(ref _statsDirty) == 1 && Interlocked.CompareExchange(ref _statsRefreshing, 1, 0) == 0)
                _ = RefreshLoopAsync(executor);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        _stopping.Cancel();
        if (_loading is not null) await _loading.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    int _disposed;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stopping.Cancel();
        if (_loading is not null) { try { await _loading; } catch { } }
        _ready = false;
        if (Loop is not null) await Loop.DisposeAsync();
        if (Executor is not null) await Executor.DisposeAsync();
        Tokenizer?.Dispose();
        _stopping.Dispose();
    }
}
