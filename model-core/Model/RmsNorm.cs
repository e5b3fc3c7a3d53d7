using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>RMSNorm: x / sqrt(mean(x^2) + eps) * weight, the statistic taken in float32.</summary>
public sealed class RmsNorm(Tensor weight, double eps) : IDisposable
{
    public Tensor Weight { get; } = weight;

    public Tensor Forward(Tensor x)
    {
        var xf = x.to(ScalarType.Float32);
        var variance = xf.pow(2).mean([-1L], keepdim: true);
        return Weight * (xf * rsqrt(variance + eps)).to(x.dtype);
    }

    public void Dispose() => Weight.Dispose();
}
