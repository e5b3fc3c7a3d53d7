using System.Text.Json.Nodes;

namespace Grid.ModelCore.Sampling;

/// <summary>
/// Default sampling settings from a checkpoint's <c>generation_config.json</c>, as vLLM reads them (<c>--generation-config
/// auto</c>): only <c>temperature</c>, <c>top_p</c>, <c>top_k</c>, <c>min_p</c>, <c>repetition_penalty</c> and
/// <c>max_new_tokens</c> (the default max_tokens); other keys (<c>do_sample</c>, token ids) are ignored. A request's own
/// field always wins; a field neither gives keeps the API default. Null: the file does not set it.
/// </summary>
public sealed record GenerationDefaults
{
    public double? Temperature { get; init; }
    public double? TopP { get; init; }
    public int? TopK { get; init; }
    public double? MinP { get; init; }
    public double? RepetitionPenalty { get; init; }
    public int? MaxNewTokens { get; init; }

    public static GenerationDefaults None { get; } = new();

    public const string FileName = "generation_config.json";

    /// <summary>
    /// <paramref name="setting"/>: "auto" reads <c>generation_config.json</c> from the checkpoint folder (none there: no
    /// defaults), "vllm" ignores it, anything else is a folder holding a <c>generation_config.json</c>.
    /// </summary>
    public static GenerationDefaults Load(string setting, string modelDirectory)
    {
        if (string.Equals(setting, "vllm", StringComparison.OrdinalIgnoreCase)) return None;
        bool auto = string.IsNullOrEmpty(setting) || string.Equals(setting, "auto", StringComparison.OrdinalIgnoreCase);
        var path = Path.Combine(auto ? modelDirectory : setting, FileName);
        if (!File.Exists(path))
        {
            if (auto) return None;
            throw new FileNotFoundException($"Grid:Model:GenerationConfig: {path} does not exist", path);
        }
        return Parse(File.ReadAllText(path), path);
    }

    public static GenerationDefaults Parse(string json, string source = FileName)
    {
        JsonObject root;
        try { root = JsonNode.Parse(json) as JsonObject ?? throw new FormatException("not a JSON object"); }
        catch (Exception e) when (e is System.Text.Json.JsonException or FormatException)
        {
            throw new FormatException($"{source}: {e.Message}");
        }
        double? Number(string key)
        {
            if (root[key] is not JsonValue v) return null;
            if (v.TryGetValue<double>(out var d)) return d;
            throw new FormatException($"{source}: '{key}' must be a number");
        }
        int? Integer(string key) => Number(key) is { } d
            ? d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue ? (int)d : throw new FormatException($"{source}: '{key}' must be an integer")
            : null;
        var defaults = new GenerationDefaults
        {
            Temperature = Number("temperature"),
            TopP = Number("top_p"),
            TopK = Integer("top_k"),
            MinP = Number("min_p"),
            RepetitionPenalty = Number("repetition_penalty"),
            MaxNewTokens = Integer("max_new_tokens"),
        };
        if (defaults.Temperature is < 0 or > 2 || defaults.TopP is <= 0 or > 1 || defaults.MinP is < 0 or > 1 || defaults.RepetitionPenalty is <= 0 || defaults.MaxNewTokens is < 1)
            throw new FormatException($"{source}: a sampling default is out of range ({defaults})");
        return defaults;
    }
}
