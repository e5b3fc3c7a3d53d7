namespace Grid.ModelCore.Kernels;

/// <summary>
/// How the linear weights of routed and shared experts, dense MLPs, attention projections and lm_head (when not tied to
/// the embedding) are stored (<c>--quantization</c>, named as vLLM names it). Embeddings, norms, the router gate and
/// kv_b_proj's absorbed factors stay in the compute dtype.
/// </summary>
public enum WeightQuantization
{
    /// <summary>The compute dtype (float32 unless --dtype says otherwise).</summary>
    None,
    /// <summary>int8 codes, one float32 scale per output row and 32-column block (symmetric, absmax / 127; <see cref="QuantizedMatrix.DefaultInt8BlockColumns"/>).</summary>
    Int8,
    /// <summary>FP8 E4M3 codes with float32 scales per 128x128 block (DeepSeek-V3's layout; absmax / 448).</summary>
    Fp8,
}

public static class WeightQuantizationNames
{
    public static readonly string[] Names = ["none", "int8", "fp8"];

    /// <summary>Parses none | int8 | fp8 (case-insensitive; empty means none).</summary>
    public static WeightQuantization Parse(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "" or "none" => WeightQuantization.None,
        "int8" => WeightQuantization.Int8,
        "fp8" => WeightQuantization.Fp8,
        _ => throw new ArgumentException($"quantization '{name}' is not supported (none, int8, fp8)"),
    };

    public static string Name(this WeightQuantization q) => q switch
    {
        WeightQuantization.Int8 => "int8",
        WeightQuantization.Fp8 => "fp8",
        _ => "none",
    };
}
