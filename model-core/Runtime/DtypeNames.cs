using static TorchSharp.torch;

namespace Grid.ModelCore.Runtime;

/// <summary>Compute dtype names accepted in configuration and on the command line.</summary>
public static class DtypeNames
{
    public static ScalarType Parse(string name) => name.ToLowerInvariant() switch
    {
        "float32" or "f32" or "fp32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "f16" or "fp16" or "half" => ScalarType.Float16,
        _ => throw new ArgumentException($"dtype: '{name}' is not supported (float32, bfloat16, float16)"),
    };
}
