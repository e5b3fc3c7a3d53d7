using System.Diagnostics;
using Grid.Configuration;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Weights;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace Grid.Grains.Hosting;

/// <summary>
/// The silo-wide model part: loads, once at silo start, only the tensors this silo serves (the attention
/// part and/or its declared expert groups) onto one inference thread, and keeps them for the silo's lifetime. Grains
/// reach the weights through it, so grain activation and collection never reload anything. An elastic silo
/// (<c>Grid:Silo:Elastic</c>) also loads, once, any other expert group whose grain is placed on it
/// (<see cref="EnsureGroupAsync"/>), from the memory-mapped checkpoint.
/// </summary>
public sealed class ModelHost : IHostedService, IDisposable
{
    readonly GridOptions _grid;
    readonly SiloOptions _options;
    readonly ILogger<ModelHost> _logger;
    readonly TaskCompletionSource<DeepseekV2Model> _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly Dictionary<int, Task> _elasticLoads = new();   // group -> its on-demand load (elastic silos), under the lock
    readonly SortedSet<int> _elasticHeld = new();           // groups loaded on demand, under the lock
    readonly Lock _elasticLock = new();
    readonly Lock _detailLock = new();
    volatile bool _declaredLoaded;                         // the start-up load (declared groups) is done
    readonly CancellationTokenSource _stopping = new();     // cancelled when the host begins to stop: a load in progress ends

    public InferenceThread Thread { get; }
    public ModelConfig Config { get; }
    public ScalarType Dtype { get; }
    public ExpertRange[] GroupRanges { get; }
    /// <summary>What this silo serves (<c>Grid:Silo</c>).</summary>
    public SiloOptions Options => _options;
    public string Detail { get; private set; } = "loading";
    string ModelPath => _grid.Model.Path ?? "";

    /// <param name="options">The silo's <c>Grid:*</c> tree (<c>grid-silo</c> validates it before the host starts).</param>
    /// <param name="lifetime">When given, a load still running when the host begins to stop is abandoned at the next
    /// tensor (SIGTERM during a long load ends the process at once instead of after the load).</param>
    public ModelHost(GridOptions options, ILogger<ModelHost> logger, IHostApplicationLifetime? lifetime = null)
    {
        lifetime?.ApplicationStopping.Register(_stopping.Cancel);
        _grid = options;
        _options = options.Silo;
        _logger = logger;
        if (string.IsNullOrEmpty(ModelPath)) throw new ArgumentException("Grid:Model:Path is not set for this silo");
        Config = ModelConfig.Load(Path.Combine(ModelPath, "config.json"));
        Dtype = Grid.ModelCore.Runtime.DtypeNames.Parse(options.Model.Dtype);
        int groups = options.Cluster.ExpertGroups;
        GroupRanges = Config.NRoutedExperts > 0 ? ExpertRange.Partition(Config.NRoutedExperts, groups) : [];
        foreach (var g in _options.ExpertGroups)
            if (g < 0 || g >= groups)
                throw new ArgumentException($"Grid:Silo:ExpertGroups: group {g} is outside 0..{groups - 1} (Grid:Cluster:ExpertGroups is {groups})");
        ValidateDevice(_options.Device);
        Thread = new InferenceThread("grid-silo-inference", _options.TorchThreads > 0 ? _options.TorchThreads : null);
    }

    /// <summary>
    /// "cpu" is always served. "cuda:N" needs a CUDA build of TorchSharp (TorchSharp-cuda-linux, a build switch this
    /// repository's CI cannot restore) and a visible GPU N; otherwise the silo refuses to start with a clear error.
    /// </summary>
    public static void ValidateDevice(string device)
    {
        if (device == "cpu") return;
        if (!device.StartsWith("cuda:", StringComparison.Ordinal) || !int.TryParse(device[5..], out var index) || index < 0)
            throw new ArgumentException($"Grid:Silo:Device: '{device}' is not a device (cpu or cuda:N)");
        if (!TorchSharp.torch.cuda.is_available())
            throw new ArgumentException($"Grid:Silo:Device: '{device}' requested, but this build has no CUDA backend (TorchSharp-cpu) or no GPU is visible");
        throw new ArgumentException($"Grid:Silo:Device: '{device}': CUDA execution is not implemented yet in this version of Grid; use cpu");
    }

    /// <summary>Completes when the weights are loaded.</summary>
    public Task<DeepseekV2Model> ModelAsync(CancellationToken cancellationToken = default) => _loaded.Task.WaitAsync(cancellationToken);

    public bool IsReady => _loaded.Task.IsCompletedSuccessfully;

    /// <summary>Why loading the model part failed (null while loading or once loaded).</summary>
    public Exception? LoadError => _loaded.Task.Exception?.InnerException;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        // Load in the background: the silo joins the cluster at once and reports ready when this completes.
        _ = Task.Run(async () =>
        {
            var sw = Stopwatch.StartNew();
            try
            {
                var ranges = _options.ExpertGroups.Select(g => GroupRanges[g]).ToArray();
                var model = await Thread.RunAsync(() => DeepseekV2Model.Load(ModelPath, new ModelLoadOptions
                {
                    Dtype = Dtype,
                    Quantization = string.IsNullOrEmpty(_grid.Model.Quantization) ? null : Grid.ModelCore.Kernels.WeightQuantizationNames.Parse(_grid.Model.Quantization),
                    KvCacheDtype = Grid.ModelCore.Cache.KvCacheDtypeNames.Parse(_options.KvCacheDtype),
                    LoadAttention = _options.Attention,
                    ExpertRanges = ranges,
                    CacheBlockSize = _options.CacheBlockSize,
                    CacheMaxBytes = _options.CacheMaxBytes,
                    MemoryUtilization = _options.MemoryUtilization,
                    PrefixCaching = _options.PrefixCaching,
                    Cancellation = _stopping.Token,
                }, new DecileProgress(p =>
                    _logger.LogInformation("loading weights {Done}/{Total} tensors ({Mib} MiB)", p.TensorsDone, p.TensorsTotal, p.BytesDone >> 20))),
                    CancellationToken.None);
                _declaredLoaded = true;
                UpdateDetail(model);   // before completing: the "ready" line reads it
                _logger.LogInformation("model part loaded in {Seconds:F1} s: {Detail}", sw.Elapsed.TotalSeconds, Detail);
                if (model.Cache is not null) _logger.LogInformation("latent-cache budget {Budget}", model.CacheBudgetReason);
                _loaded.TrySetResult(model);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                Detail = "load abandoned: the host is stopping";
                _logger.LogInformation("loading the model part abandoned after {Seconds:F1} s: the host is stopping", sw.Elapsed.TotalSeconds);
                _loaded.TrySetCanceled(_stopping.Token);
            }
            catch (Exception e)
            {
                Detail = "load failed: " + e.Message;
                _logger.LogError(e, "loading the model part failed");
                _loaded.TrySetException(e);
            }
        }, CancellationToken.None);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _stopping.Cancel();
        return Task.CompletedTask;
    }

    /// <summary>The expert groups this silo holds now: its declared groups once loaded, and the groups an elastic silo loaded on demand.</summary>
    public int[] HeldGroups()
    {
        var held = _declaredLoaded ? _options.ExpertGroups.ToList() : new List<int>();
        lock (_elasticLock) held.AddRange(_elasticHeld);
        return held.Distinct().Order().ToArray();
    }

    /// <summary>Whether expert group <paramref name="group"/>'s tensors are loaded on this silo.</summary>
    public bool HoldsGroup(int group) => HeldGroups().Contains(group);

    /// <summary>
    /// Completes when expert group <paramref name="group"/> is loaded on this silo: a declared group with the silo's
    /// model part; on an elastic silo any other group is loaded once, on the inference thread, by the first caller
    /// (concurrent callers share that load; a failed load is retried by the next caller). A silo that neither
    /// declares the group nor is elastic refuses.
    /// </summary>
    public Task EnsureGroupAsync(int group, CancellationToken cancellationToken = default)
    {
        if (group < 0 || group >= GroupRanges.Length)
            throw new ArgumentOutOfRangeException(nameof(group), $"expert group {group} is outside 0..{GroupRanges.Length - 1} (Grid:Cluster:ExpertGroups is {GroupRanges.Length})");
        if (_options.ExpertGroups.Contains(group)) return ModelAsync(cancellationToken);
        if (!_options.Elastic)
            return Task.FromException(new InvalidOperationException($"expert group {group} is not served by this silo (Grid:Silo:ExpertGroups is [{_options.ExpertGroups}] and Grid:Silo:Elastic is false)"));
        Task load;
        lock (_elasticLock)
        {
            if (!_elasticLoads.TryGetValue(group, out load!) || load.IsFaulted || load.IsCanceled)
                _elasticLoads[group] = load = LoadGroupAsync(group);
        }
        return load.WaitAsync(cancellationToken);
    }

    async Task LoadGroupAsync(int group)
    {
        var model = await ModelAsync(CancellationToken.None);
        var range = GroupRanges[group];
        var sw = Stopwatch.StartNew();
        _logger.LogInformation("elastic: loading expert group {Group} (experts {Range}) for every MoE layer", group, range);
        try
        {
            await Thread.RunAsync(() => model.LoadExpertGroup(ModelPath, range, new DecileProgress(p =>
                _logger.LogInformation("elastic: expert group {Group}: {Done}/{Total} tensors ({Mib} MiB)", group, p.TensorsDone, p.TensorsTotal, p.BytesDone >> 20))),
                CancellationToken.None);
        }
        catch (Exception e)
        {
            _logger.LogError(e, "elastic: loading expert group {Group} failed", group);
            throw;
        }
        lock (_elasticLock) _elasticHeld.Add(group);
        UpdateDetail(model);
        _logger.LogInformation("elastic: expert group {Group} loaded in {Seconds:F1} s", group, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Refreshes <see cref="Detail"/>: attention or not, the groups held (declared and loaded on demand), elastic or not, tensors.</summary>
    void UpdateDetail(DeepseekV2Model model)
    {
        lock (_detailLock)   // two on-demand loads finishing together: the later write sees both groups
            Detail = $"attention={_options.Attention} groups=[{string.Join(",", HeldGroups())}]{(_options.Elastic ? " elastic" : "")} tensors={model.LoadedTensors.Count}";
    }

    /// <summary>Runs tensor work on the silo's inference thread once the weights are loaded.</summary>
    public async Task<T> RunAsync<T>(Func<DeepseekV2Model, T> work, CancellationToken cancellationToken)
    {
        var model = await ModelAsync(cancellationToken);
        return await Thread.RunAsync(() => work(model), cancellationToken);
    }

    int _disposed;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        if (_loaded.Task.IsCompletedSuccessfully)
        {
            var model = _loaded.Task.Result;
            Thread.RunAsync(() => model.Dispose()).Wait();
        }
        Thread.Dispose();
        _stopping.Dispose();
    }
}
