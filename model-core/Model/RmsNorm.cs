using Grid.ModelCore.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>RMSNorm: x / sqrt(mean(x^2) + eps) * weight, the statistic taken in float32.</summary>
public sealed class RmsNorm(Tensor weight, double eps) : IDisposable
{
    readonly Scalar _eps = eps.ToScalar();   // owned for the norm's lifetime (see Scalars)

    public Tensor Weight { get; } = weight;

    public long Bytes => WeightBytes.Of(Weight);

    public Tensor Forward(Tensor x)
    {
        bool f32 = x.dtype == ScalarType.Float32;
        var xf = f32 ? x : x.to(ScalarType.Float32);
        var normed = xf * rsqrt(xf.mul(xf).mean([-1L], keepdim: true).Add(_eps));
        return Weight * (f32 ? normed : normed.to(x.dtype));
    }

    public void Dispose()
    {
        Weight.Dispose();
        _eps.Dispose();
    }
}
