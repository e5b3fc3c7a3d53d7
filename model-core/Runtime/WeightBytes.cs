using static TorchSharp.torch;

namespace Grid.ModelCore.Runtime;

/// <summary>The bytes a weight tensor holds.</summary>
public static class WeightBytes
{
    public static long Of(Tensor? t) => t is null ? 0 : t.NumberOfElements * t.ElementSize;
}
