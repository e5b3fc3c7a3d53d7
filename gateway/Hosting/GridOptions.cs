using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The <c>Grid:*</c> options tree, bound from appsettings.json, environment variables (<c>Grid__Model__Path</c>)
/// and command-line flags (which win).
/// </summary>
public sealed class GridOptions
{
    public const string Section = "Grid";

    public ModelOptions Model { get; set; } = new();
    public HttpOptions Http { get; set; } = new();
    public SchedulerOptions Scheduler { get; set; } = new();
    /// <summary>The grid this gateway drives (Grid:Cluster:*); "embedded" co-hosts one silo in this process.</summary>
    public Grid.Grains.Hosting.GridClusterOptions Cluster { get; set; } = new();
}

/// <summary><c>Grid:Model:*</c>.</summary>
public sealed class ModelOptions
{
    /// <summary>Checkpoint folder (Hugging Face layout); empty = the built-in tiny checkpoint.</summary>
    public string? Path { get; set; }
    /// <summary>Compute dtype: float32, bfloat16, float16.</summary>
    public string Dtype { get; set; } = "float32";
    /// <summary>"grid" (default: the Orleans grid, embedded or clustered) or "local" (model-core in process, no Orleans).</summary>
    public string Engine { get; set; } = "grid";
    /// <summary>Caps the context length below the checkpoint's max_position_embeddings (0 = no cap).</summary>
    public int MaxModelLen { get; set; }
    /// <summary>Name served in /v1/models and required in requests; default: "grid-tiny" or the folder's name.</summary>
    public string? ServedName { get; set; }
}

/// <summary><c>Grid:Http:*</c>.</summary>
public sealed class HttpOptions
{
    /// <summary>Address to bind; 0.0.0.0 for every interface.</summary>
    public string Host { get; set; } = "0.0.0.0";
    /// <summary>TCP port; 0 = any free port.</summary>
    public int Port { get; set; } = 8080;
    /// <summary>When non-empty, /v1/* requires <c>Authorization: Bearer &lt;one of these&gt;</c>.</summary>
    public List<string> ApiKeys { get; set; } = new();
    /// <summary>Largest request body accepted; larger ones get 413.</summary>
    public long MaxRequestBodyBytes { get; set; } = 4 * 1024 * 1024;
    /// <summary>Chat max_tokens when the request gives none (also capped by the room left in the context).</summary>
    public int ChatDefaultMaxTokens { get; set; } = 4096;
    /// <summary>Most choices (n) per request.</summary>
    public int MaxChoices { get; set; } = 16;
    /// <summary>Expose /debug/steps and /debug/cache.</summary>
    public bool DebugEndpoints { get; set; } = true;
}
