using System.Reflection;

namespace Grid.Configuration;

/// <summary>The executables that read the <c>Grid:*</c> tree (each binds and validates the sections it uses).</summary>
[Flags]
public enum GridExecutable
{
    /// <summary><c>grid serve</c>: the HTTP gateway.</summary>
    Serve = 1,
    /// <summary><c>grid generate</c>: one offline completion.</summary>
    Generate = 2,
    /// <summary><c>grid-silo</c>: one silo of a cluster.</summary>
    Silo = 4,
    /// <summary><c>Grid.Benchmarks</c> (the cluster client settings it reads back from deploy/local/cluster.sh).</summary>
    Benchmark = 8,
}

/// <summary>One command-line flag and the <c>Grid:*</c> key it sets.</summary>
/// <param name="Name">The flag, e.g. <c>--model</c>.</param>
/// <param name="Key">The configuration key it sets, e.g. <c>Grid:Model:Path</c>.</param>
/// <param name="ReadBy">The executables that accept it.</param>
/// <param name="Description">Help text.</param>
public sealed record GridFlag(string Name, string Key, GridExecutable ReadBy, string Description)
{
    /// <summary>The bound property's type (from <see cref="GridOptions"/>): int, long, double, bool, string or a list.</summary>
    public Type ValueType { get; } = GridKeys.TypeOf(Key);
    /// <summary>A list key (<c>Grid:Http:ApiKeys</c>): the flag may be repeated, each value one entry.</summary>
    public bool IsList => ValueType != typeof(string) && ValueType != typeof(GroupList) && typeof(System.Collections.IEnumerable).IsAssignableFrom(ValueType);
    /// <summary>A string key whose flag takes several values (<c>--served-model-name a b</c>), joined with spaces.</summary>
    public bool ManyValues { get; init; }
    /// <summary>A bool key's second flag that sets it to false (<c>--no-enable-prefix-caching</c>, vLLM's spelling).</summary>
    public string? Negation { get; init; }
}

/// <summary>
/// The one table of command-line flags: every executable maps a flag to the same <c>Grid:*</c> key, and flags win over
/// environment variables, which win over the JSON file. docs/configuration.md lists them with their keys.
/// </summary>
public static class GridFlags
{
    const GridExecutable Gateway = GridExecutable.Serve | GridExecutable.Generate;
    const GridExecutable Everywhere = Gateway | GridExecutable.Silo;

    public static IReadOnlyList<GridFlag> All { get; } =
    [
        new("--model", "Grid:Model:Path", Everywhere, "Checkpoint folder (Hugging Face layout); grid: default the built-in tiny model"),
        new("--dtype", "Grid:Model:Dtype", Everywhere, "Compute dtype: float32 (default), bfloat16, float16"),
        new("--quantization", "Grid:Model:Quantization", Everywhere, "Linear weights in 8 bits: int8 or fp8 (block scales), none (compute dtype); default: the checkpoint's (fp8 for an FP8 checkpoint)"),
        new("--engine", "Grid:Model:Engine", Gateway, "grid (default: the embedded grid, or the cluster Grid:Cluster configures) or local (model-core in process)"),
        new("--max-model-len", "Grid:Model:MaxModelLen", Gateway, "Cap on the context length (0 = the checkpoint's)"),
        new("--served-model-name", "Grid:Model:ServedName", Gateway, "Model names in the API, e.g. --served-model-name a b (all accepted, the first reported; default: grid-tiny or the folder's name)") { ManyValues = true },
        new("--chat-template", "Grid:Model:ChatTemplate", Gateway, "A Jinja2 chat template file replacing the checkpoint's chat_template"),
        new("--generation-config", "Grid:Model:GenerationConfig", Gateway, "Default sampling settings: auto (the checkpoint's generation_config.json), vllm (none) or a folder"),
        new("--host", "Grid:Http:Host", GridExecutable.Serve, "Address to bind (default 0.0.0.0)"),
        new("--port", "Grid:Http:Port", GridExecutable.Serve, "TCP port (default 8080; 0 = any free port)"),
        new("--api-key", "Grid:Http:ApiKeys", GridExecutable.Serve, "Accepted API key; repeat for several"),
        new("--max-request-body-bytes", "Grid:Http:MaxRequestBodyBytes", GridExecutable.Serve, "Largest request body (larger ones get 413)"),
        new("--max-running-sequences", "Grid:Scheduler:MaxRunningSequences", Gateway, "Most sequences in the running batch"),
        new("--max-batched-tokens", "Grid:Scheduler:MaxBatchedTokens", Gateway, "Most new tokens one step carries"),
        new("--prefill-chunk-tokens", "Grid:Scheduler:PrefillChunkTokens", Gateway, "Longest prefill chunk of one sequence per step"),
        new("--keep-alive-seconds", "Grid:Http:KeepAliveSeconds", Gateway, "Seconds of silence after which a stream gets an SSE keep-alive comment (0 = off)"),
        new("--drain-seconds", "Grid:Http:DrainSeconds", Gateway, "On SIGTERM, seconds running streams get to finish"),
        new("--max-waiting", "Grid:Scheduler:MaxWaiting", Gateway, "Most requests waiting to be admitted (429 beyond)"),
        new("--max-queue-seconds", "Grid:Scheduler:MaxQueueSeconds", Gateway, "Longest wait to be admitted before 429 (0 = no limit)"),
        new("--log-steps", "Grid:Scheduler:LogSteps", Gateway, "Log every scheduler step"),
        new("--clustering", "Grid:Cluster:Clustering", Everywhere, "embedded (default; grid-silo: localhost), localhost or redis"),
        new("--redis", "Grid:Cluster:Redis", Everywhere, "Redis connection for membership"),
        new("--redis-password", "Grid:Cluster:RedisPassword", Everywhere, "Redis membership password (prefer Grid__Cluster__RedisPassword from a secret: argv is visible to every user)"),
        new("--tls-certificate", "Grid:Cluster:Tls:CertificatePath", Everywhere, "Cluster TLS: this process's certificate (PEM or .pfx); turns TLS on"),
        new("--tls-key", "Grid:Cluster:Tls:KeyPath", Everywhere, "Cluster TLS: PEM private key of --tls-certificate when not in the same file"),
        new("--tls-ca", "Grid:Cluster:Tls:CaPath", Everywhere, "Cluster TLS: PEM file of the cluster CA peers' certificates must chain to"),
        new("--expert-groups", "Grid:Cluster:ExpertGroups", Everywhere, "Expert groups the routed experts are split into"),
        new("--attention-shards", "Grid:Cluster:AttentionShards", Gateway, "Attention shards"),
        new("--max-groups-per-token", "Grid:Cluster:MaxGroupsPerToken", Gateway, "Device-limited routing M: most expert groups per token, 0 = off"),
        new("--expert-exchange", "Grid:Cluster:ExpertExchange", Gateway, "Who carries MoE hidden states: shard (the attention shard calls the groups) or gateway (two round trips per layer)"),
        new("--layers-per-call", "Grid:Cluster:LayersPerCall", Gateway, "Shard exchange: MoE layers a shard walks per gateway call, 0 = the whole step in one call"),
        new("--wire-dtype", "Grid:Cluster:WireDtype", Gateway, "Hidden states on the wire: float32 (exact), float16 or bfloat16 (half the bytes)"),
        new("--silo-port", "Grid:Cluster:SiloPort", GridExecutable.Silo, "Silo-to-silo port (0 = a free one)"),
        new("--gateway-port", "Grid:Cluster:GatewayPort", GridExecutable.Silo, "This silo's client gateway port (0 = a free one)"),
        new("--primary-port", "Grid:Cluster:PrimarySiloPort", GridExecutable.Silo, "Primary silo's port for localhost clustering"),
        new("--groups", "Grid:Silo:ExpertGroups", GridExecutable.Silo, "Expert groups this silo serves, e.g. 0,1"),
        new("--ordinal", "Grid:Silo:Ordinal", GridExecutable.Silo, "This expert silo's ordinal (StatefulSet pod index): its groups follow from it and --expert-silos"),
        new("--expert-silos", "Grid:Silo:ExpertSilos", GridExecutable.Silo, "Expert silos the ordinal layout is computed over"),
        new("--attention", "Grid:Silo:Attention", GridExecutable.Silo, "Whether this silo hosts attention (true/false)"),
        new("--elastic", "Grid:Silo:Elastic", GridExecutable.Silo, "Whether this silo serves any expert group no live silo declares, loading it on demand (true/false)"),
        new("--device", "Grid:Silo:Device", GridExecutable.Silo, "cpu, or cuda:N in a CUDA build"),
        new("--torch-threads", "Grid:Silo:TorchThreads", GridExecutable.Silo, "Torch intra-op threads (0 = torch default)"),
        new("--metrics-port", "Grid:Silo:MetricsPort", GridExecutable.Silo, "Prometheus metrics port (0 = off)"),
        new("--block-size", "Grid:Silo:CacheBlockSize", Everywhere, "Latent cache block (page) size in tokens"),
        new("--kv-cache-dtype", "Grid:Silo:KvCacheDtype", Everywhere, "Latent-cache rows: auto (compute dtype), int8 or fp8 (8 bits with per-token scales)"),
        new("--cache-max-bytes", "Grid:Silo:CacheMaxBytes", Everywhere, "Latent-cache budget of an attention host in bytes (the planner admits and preempts against it); default: from --memory-utilization"),
        new("--enable-prefix-caching", "Grid:Silo:PrefixCaching", Everywhere, "Automatic prefix caching: share latent-cache blocks between requests with a common prefix (default on; off: --no-enable-prefix-caching)")
            { Negation = "--no-enable-prefix-caching" },
        new("--memory-utilization", "Grid:Silo:MemoryUtilization", Everywhere, "Fraction of host memory this process may use (weights + latent cache), like vLLM's --gpu-memory-utilization; sets the cache budget when --cache-max-bytes is not given (default 0.9)"),
    ];

    /// <summary>Older spellings still accepted: <c>--group-count</c> (grid-silo) is <c>--expert-groups</c>.</summary>
    public static IReadOnlyDictionary<string, string> Aliases { get; } = new Dictionary<string, string>
    {
        ["--group-count"] = "--expert-groups",
    };

    public static IEnumerable<GridFlag> For(GridExecutable executable) => All.Where(f => f.ReadBy.HasFlag(executable));

    /// <summary>
    /// Command-line arguments with bool switches spelled out for <c>AddCommandLine</c>, which wants a value after every
    /// flag: a bare <c>--enable-prefix-caching</c> becomes <c>--enable-prefix-caching=true</c> and its negation
    /// <c>--no-enable-prefix-caching</c> becomes <c>--enable-prefix-caching=false</c>.
    /// </summary>
    public static string[] ExpandSwitches(IReadOnlyList<string> args, GridExecutable executable)
    {
        var switches = For(executable).Where(f => f.ValueType == typeof(bool)).ToList();
        var result = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            bool valueFollows = i + 1 < args.Count && bool.TryParse(args[i + 1], out _);
            if (switches.FirstOrDefault(f => f.Negation == a) is { } negated) result.Add($"{negated.Name}=false");
            else if (switches.Any(f => f.Name == a) && !valueFollows) result.Add($"{a}=true");
            else result.Add(a);
        }
        return result.ToArray();
    }

    /// <summary>Switch mappings for <c>IConfigurationBuilder.AddCommandLine</c> (flags and aliases of one executable).</summary>
    public static IDictionary<string, string> SwitchMappings(GridExecutable executable)
    {
        var map = For(executable).ToDictionary(f => f.Name, f => f.Key);
        foreach (var (alias, name) in Aliases)
            if (map.TryGetValue(name, out var key)) map[alias] = key;
        return map;
    }

    /// <summary>"Grid:Model:Path (--model)" for a key that has a flag, the key alone otherwise.</summary>
    public static string Describe(string key) =>
        All.FirstOrDefault(f => f.Key == key) is { } flag ? $"{key} ({flag.Name})" : key;
}

/// <summary>The keys of the <see cref="GridOptions"/> tree, found by reflection (docs and flags are checked against them).</summary>
public static class GridKeys
{
    /// <summary>Every leaf key, e.g. <c>Grid:Http:Port</c>, with its type.</summary>
    public static IEnumerable<(string Key, Type Type)> All() => Leaves(typeof(GridOptions), GridOptions.Section);

    static IEnumerable<(string, Type)> Leaves(Type type, string prefix)
    {
        foreach (var p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite))
        {
            var key = prefix + ":" + p.Name;
            if (IsSection(p.PropertyType))
                foreach (var leaf in Leaves(p.PropertyType, key)) yield return leaf;
            else
                yield return (key, p.PropertyType);
        }
    }

    static bool IsSection(Type t) => t.IsClass && t != typeof(string) && t.Namespace == typeof(GridOptions).Namespace && t != typeof(GroupList);

    public static Type TypeOf(string key) =>
        All().FirstOrDefault(k => k.Key == key).Type ?? throw new ArgumentException($"{key} is not a Grid option");
}
