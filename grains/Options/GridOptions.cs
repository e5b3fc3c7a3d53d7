using System.ComponentModel;
using System.Globalization;

namespace Grid.Configuration;

/// <summary>
/// The one <c>Grid:*</c> options tree every executable binds (gateway <c>serve</c> and <c>generate</c>, <c>grid-silo</c>,
/// the benchmark): from a JSON file (appsettings.json for <c>grid</c>, grid-silo.json for <c>grid-silo</c>), then
/// environment variables (<c>Grid__Model__Path</c>), then command-line flags (<see cref="GridFlags"/>), which win.
/// Each executable reads the sections it needs and validates them (<see cref="GridOptionsSetup"/>); every key is
/// listed in docs/configuration.md.
/// </summary>
public sealed class GridOptions
{
    public const string Section = "Grid";

    public ModelOptions Model { get; set; } = new();
    public HttpOptions Http { get; set; } = new();
    public SchedulerOptions Scheduler { get; set; } = new();
    /// <summary>The deployment's shape and how its processes find each other; "embedded" co-hosts one silo in the gateway.</summary>
    public GridClusterOptions Cluster { get; set; } = new();
    public SiloOptions Silo { get; set; } = new();
    public LoggingOptions Logging { get; set; } = new();
}

/// <summary><c>Grid:Model:*</c>.</summary>
public sealed class ModelOptions
{
    /// <summary>Checkpoint folder (Hugging Face layout); empty = the built-in tiny checkpoint (gateway only; a silo needs one).</summary>
    public string? Path { get; set; }
    /// <summary>Compute dtype: float32, bfloat16, float16.</summary>
    public string Dtype { get; set; } = "float32";
    /// <summary>
    /// How linear weights (routed and shared experts, dense MLPs, attention projections) are stored, vLLM's
    /// <c>--quantization</c>: "int8" or "fp8" (8 bits with block scales, computed on directly by the decode kernels),
    /// "none" (the compute dtype; an FP8 checkpoint is dequantized). Unset: the checkpoint's own (fp8 for an FP8
    /// checkpoint, none otherwise).
    /// </summary>
    public string? Quantization { get; set; }
    /// <summary>"grid" (default: the Orleans grid, embedded or clustered) or "local" (model-core in process, no Orleans).</summary>
    public string Engine { get; set; } = "grid";
    /// <summary>Caps the context length below the checkpoint's max_position_embeddings (0 = no cap).</summary>
    public int MaxModelLen { get; set; }
    /// <summary>
    /// Names served in /v1/models and accepted in requests, separated by spaces or commas (vLLM's
    /// <c>--served-model-name a b</c>); the first is reported in responses. Default: "grid-tiny" or the folder's name.
    /// </summary>
    public string? ServedName { get; set; }
    /// <summary>A chat template file (Jinja2) that replaces the checkpoint's <c>chat_template</c>; empty: the checkpoint's.</summary>
    public string? ChatTemplate { get; set; }
    /// <summary>Default sampling settings: "auto" (the checkpoint's generation_config.json), "vllm" (none), or a folder holding one.</summary>
    public string GenerationConfig { get; set; } = "auto";

    /// <summary>The served names, in order (empty when none is configured).</summary>
    public IReadOnlyList<string> ServedNames() =>
        (ServedName ?? "").Split([' ', ',', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct(StringComparer.Ordinal).ToArray();
}

/// <summary><c>Grid:Http:*</c>.</summary>
public sealed class HttpOptions
{
    /// <summary>Address to bind; 0.0.0.0 for every interface.</summary>
    public string Host { get; set; } = "0.0.0.0";
    /// <summary>TCP port; 0 = any free port.</summary>
    public int Port { get; set; } = 8080;
    /// <summary>
    /// When any key is configured (here, in <see cref="ApiKeysFile"/> or in <c>GRID_API_KEY</c>), every route except
    /// /health and /ready requires <c>Authorization: Bearer &lt;one of them&gt;</c>.
    /// </summary>
    public List<string> ApiKeys { get; set; } = new();
    /// <summary>A file of API keys, one per line (blank lines and lines starting with # skipped), e.g. a mounted Kubernetes Secret.</summary>
    public string? ApiKeysFile { get; set; }

    /// <summary>The keys of an <see cref="ApiKeysFile"/>: one per line, trimmed; blank lines and # comments skipped.</summary>
    public static IReadOnlyList<string> ReadKeysFile(string path) =>
        File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();

    /// <summary>
    /// Every accepted key: <see cref="ApiKeys"/>, the lines of <see cref="ApiKeysFile"/>, and <paramref name="environmentKey"/>
    /// (<c>GRID_API_KEY</c>). Empty: no authentication.
    /// </summary>
    public IReadOnlyList<string> ResolveApiKeys(string? environmentKey)
    {
        var keys = new List<string>(ApiKeys);
        if (!string.IsNullOrEmpty(ApiKeysFile)) keys.AddRange(ReadKeysFile(ApiKeysFile));
        if (!string.IsNullOrWhiteSpace(environmentKey)) keys.Add(environmentKey.Trim());
        return keys.Distinct(StringComparer.Ordinal).ToArray();
    }
    /// <summary>Largest request body accepted; larger ones get 413.</summary>
    public long MaxRequestBodyBytes { get; set; } = 4 * 1024 * 1024;
    /// <summary>Chat max_tokens when the request gives none (also capped by the room left in the context).</summary>
    public int ChatDefaultMaxTokens { get; set; } = 4096;
    /// <summary>Most choices (n) per request.</summary>
    public int MaxChoices { get; set; } = 16;
    /// <summary>
    /// On SIGTERM: seconds running streams get to finish while /ready answers 503 and new requests get 503; then the
    /// process exits (Kubernetes: keep terminationGracePeriodSeconds above it).
    /// </summary>
    public double DrainSeconds { get; set; } = 30;
    /// <summary>A streamed response that has written nothing for this long gets an SSE comment line (": keep-alive"); 0 = off.</summary>
    public double KeepAliveSeconds { get; set; } = 15;
    /// <summary>Expose /debug/steps and /debug/cache (off by default; guarded by the API keys like every other route).</summary>
    public bool DebugEndpoints { get; set; }
}

/// <summary>
/// <c>Grid:Silo:*</c>: what one <c>grid-silo</c> serves. How many expert groups the routed experts are split into is
/// the deployment's, <c>Grid:Cluster:ExpertGroups</c>, read by silos and gateway alike.
/// </summary>
public sealed class SiloOptions
{
    /// <summary>Whether this silo hosts attention shards (latent caches, MLA, gates, shared experts, dense layers).</summary>
    public bool Attention { get; set; }
    /// <summary>The expert groups this silo serves (indices in 0..Grid:Cluster:ExpertGroups-1), e.g. "0,1".</summary>
    public GroupList ExpertGroups { get; set; } = GroupList.Empty;
    /// <summary>
    /// This silo's index among <see cref="ExpertSilos"/> expert silos (a StatefulSet pod's ordinal); -1 = not set. When
    /// set, the silo's expert groups come from <see cref="ExpertLayout.GroupsFor"/> and replace <see cref="ExpertGroups"/>.
    /// </summary>
    public int Ordinal { get; set; } = -1;
    /// <summary>How many expert silos the layout is computed over (the StatefulSet's intended replica count); 0 = not set.</summary>
    public int ExpertSilos { get; set; }
    /// <summary>
    /// Whether this silo can serve any expert group: placement falls back to elastic silos for a group no live silo
    /// declares, and the silo loads that group's tensors from the checkpoint when its grain activates there.
    /// </summary>
    public bool Elastic { get; set; }
    /// <summary>Where this silo's tensors live: "cpu", or "cuda:N" in a CUDA build (TorchSharp-cuda-linux).</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>How latent-cache rows are stored, vLLM's <c>--kv-cache-dtype</c>: "auto" (the compute dtype), "int8" or "fp8"
    /// (8-bit codes with per-token scales).</summary>
    public string KvCacheDtype { get; set; } = "auto";
    /// <summary>Latent cache block size in tokens.</summary>
    public int CacheBlockSize { get; set; } = 16;
    /// <summary>Latent-cache budget of this silo's attention shards in bytes (whole blocks); the planner admits and preempts
    /// against it. Null: derived from <see cref="MemoryUtilization"/> once the weights are loaded.</summary>
    public long? CacheMaxBytes { get; set; }
    /// <summary>Fraction of the host's memory (the container limit where there is one) this process may use in all, like
    /// vLLM's gpu_memory_utilization: without CacheMaxBytes the latent cache gets what is left after the weights.</summary>
    public double MemoryUtilization { get; set; } = Grid.ModelCore.Cache.CacheBudget.DefaultMemoryUtilization;
    /// <summary>
    /// Automatic prefix caching (vLLM's --enable-prefix-caching, on by default): full latent-cache blocks are shared
    /// between sequences whose tokens begin alike and kept, evictable, after their sequences end.
    /// </summary>
    public bool PrefixCaching { get; set; } = true;
    /// <summary>Torch intra-op threads for this silo's inference thread (0 = torch default).</summary>
    public int TorchThreads { get; set; }
    /// <summary>Prometheus listener port for this silo's metrics (0 = off).</summary>
    public int MetricsPort { get; set; }
    /// <summary>Address the Prometheus listener binds.</summary>
    public string MetricsHost { get; set; } = "127.0.0.1";
}

/// <summary><c>Grid:Logging:*</c> (log levels stay under the standard <c>Logging:LogLevel</c> section).</summary>
public sealed class LoggingOptions
{
    /// <summary>JSON console lines instead of single-line text.</summary>
    public bool Json { get; set; }
}

/// <summary>
/// A comma-separated list of expert-group indices ("0,1"; "" = none), as one configuration value so that flags and
/// environment variables can give it (<c>--groups 0,1</c>, <c>Grid__Silo__ExpertGroups=0,1</c>).
/// </summary>
[TypeConverter(typeof(GroupListConverter))]
public sealed class GroupList : IReadOnlyList<int>
{
    readonly int[] _groups;

    public GroupList(IEnumerable<int> groups) => _groups = groups.ToArray();

    public static GroupList Empty { get; } = new([]);

    /// <exception cref="FormatException">An entry is not an integer.</exception>
    public static GroupList Parse(string value) =>
        new(value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.Parse(s, NumberStyles.Integer, CultureInfo.InvariantCulture)));

    public static implicit operator GroupList(int[] groups) => new(groups);

    public int this[int index] => _groups[index];
    public int Count => _groups.Length;
    public bool Contains(int group) => Array.IndexOf(_groups, group) >= 0;
    public IEnumerator<int> GetEnumerator() => ((IEnumerable<int>)_groups).GetEnumerator();
    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => _groups.GetEnumerator();
    public override string ToString() => string.Join(",", _groups);
}

sealed class GroupListConverter : TypeConverter
{
    public override bool CanConvertFrom(ITypeDescriptorContext? context, Type sourceType) => sourceType == typeof(string) || base.CanConvertFrom(context, sourceType);

    public override object? ConvertFrom(ITypeDescriptorContext? context, CultureInfo? culture, object value) =>
        value is string s ? GroupList.Parse(s) : base.ConvertFrom(context, culture, value);
}
