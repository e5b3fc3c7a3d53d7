using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Serving;
using Grid.ModelCore.Tokenization;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;

namespace Grid.Gateway.Hosting;

/// <summary>Resolves the model folder (the built-in tiny checkpoint when none is given) and loads what serving needs.</summary>
public static class EngineFactory
{
    public static string ResolveModel(string? path, Action<string>? log = null)
    {
        if (string.IsNullOrEmpty(path)) return RandomCheckpoint.EnsureBuiltIn(new Progress<string>(m => log?.Invoke(m)));
        if (!Directory.Exists(path)) throw new DirectoryNotFoundException($"model folder not found: {path}");
        if (!File.Exists(Path.Combine(path, "config.json"))) throw new FileNotFoundException($"no config.json in {path}");
        return path;
    }

    public static string ModelName(string? path, string resolved) =>
        string.IsNullOrEmpty(path) ? "grid-tiny" : new DirectoryInfo(resolved).Name;

    /// <summary>Loads the whole model into this process on a new inference thread.</summary>
    /// <param name="cache">Latent cache block size and budget (Grid:Silo:CacheBlockSize, CacheMaxBytes); defaults when null.</param>
    public static async Task<LocalStepExecutor> LoadLocalAsync(string directory, ScalarType dtype, Action<LoadProgress>? progress, CancellationToken cancellationToken,
        SiloOptions? cache = null, string? quantization = null)
    {
        cache ??= new SiloOptions();
        var thread = new InferenceThread();
        try
        {
            var model = await thread.RunAsync(() => DeepseekV2Model.Load(directory,
                new ModelLoadOptions
                {
                    Dtype = dtype,
                    Quantization = string.IsNullOrEmpty(quantization) ? null : Grid.ModelCore.Kernels.WeightQuantizationNames.Parse(quantization),
                    KvCacheDtype = Grid.ModelCore.Cache.KvCacheDtypeNames.Parse(cache.KvCacheDtype),
                    CacheBlockSize = cache.CacheBlockSize, CacheMaxBytes = cache.CacheMaxBytes, MemoryUtilization = cache.MemoryUtilization,
                    PrefixCaching = cache.PrefixCaching,
                },
                progress is null ? null : new DecileProgress(progress)), cancellationToken);
            return new LocalStepExecutor(model, thread, ownsThread: true);
        }
        catch
        {
            thread.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The executor serving uses: "grid" (default) walks the Orleans grid - an embedded silo unless Grid:Cluster
    /// configures a cluster; "local" runs model-core in this process without Orleans.
    /// </summary>
    public static async Task<IStepExecutor> CreateExecutorAsync(string engine, string directory, string dtype,
        GridClusterOptions cluster, Microsoft.Extensions.Logging.ILoggerFactory? loggers,
        Action<LoadProgress>? progress, Action<string>? status, CancellationToken cancellationToken, SiloOptions? silo = null, string? quantization = null)
    {
        switch (engine.ToLowerInvariant())
        {
            case "local":
                return await LoadLocalAsync(directory, DtypeNames.Parse(dtype), progress, cancellationToken, silo, quantization);
            case "grid":
                DtypeNames.Parse(dtype);
                return new OwnedGridExecutor(await GridConnection.StartAsync(directory, dtype, cluster, loggers, status, cancellationToken, silo, quantization));
            default:
                throw new ArgumentException($"engine: '{engine}' is not supported (grid, local)");
        }
    }

    public static GridTokenizer LoadTokenizer(string directory, string? chatTemplateFile = null)
    {
        if (string.IsNullOrEmpty(chatTemplateFile)) return GridTokenizer.Load(directory);
        if (!File.Exists(chatTemplateFile)) throw new FileNotFoundException($"Grid:Model:ChatTemplate (--chat-template): {chatTemplateFile} does not exist", chatTemplateFile);
        try { return GridTokenizer.Load(directory, File.ReadAllText(chatTemplateFile)); }
        catch (Grid.ChatTemplates.ChatTemplateException e)
        {
            throw new ArgumentException($"Grid:Model:ChatTemplate (--chat-template): {chatTemplateFile} is not a valid chat template: {e.Message}", e);
        }
    }
}
