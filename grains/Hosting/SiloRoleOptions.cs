namespace Grid.Grains.Hosting;

/// <summary>What one silo serves (config <c>Grid:Silo:*</c>) and the model it serves it from (<c>Grid:Model:*</c>).</summary>
public sealed class SiloRoleOptions
{
    /// <summary>Checkpoint folder (Hugging Face layout).</summary>
    public string ModelPath { get; set; } = "";
    /// <summary>Compute dtype: float32, bfloat16, float16.</summary>
    public string Dtype { get; set; } = "float32";
    /// <summary>Into how many contiguous groups the routed experts are split across the deployment.</summary>
    public int ExpertGroupCount { get; set; } = 1;
    /// <summary>The expert groups this silo serves (indices in 0..ExpertGroupCount-1).</summary>
    public int[] ExpertGroups { get; set; } = [];
    /// <summary>Whether this silo hosts attention shards (latent caches, MLA, gates, shared experts, dense layers).</summary>
    public bool Attention { get; set; }
    /// <summary>Where this silo's tensors live: "cpu", or "cuda:N" in a CUDA build (TorchSharp-cuda-linux).</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>Latent cache block size in tokens.</summary>
    public int CacheBlockSize { get; set; } = 16;
    /// <summary>Latent-cache budget of this silo's attention shards in bytes (whole blocks); the planner admits and preempts against it.</summary>
    public long CacheMaxBytes { get; set; } = Grid.ModelCore.Model.ModelLoadOptions.DefaultCacheMaxBytes;
    /// <summary>Torch intra-op threads for this silo's inference thread (0 = torch default).</summary>
    public int TorchThreads { get; set; }
}

/// <summary>Silo metadata keys a silo publishes so placement can find what it serves.</summary>
public static class SiloMetadataKeys
{
    public const string ExpertGroups = "grid.expert-groups";
    public const string Attention = "grid.attention";

    public static Dictionary<string, string> For(SiloRoleOptions o) => new()
    {
        [ExpertGroups] = string.Join(",", o.ExpertGroups),
        [Attention] = o.Attention ? "true" : "false",
    };
}
