using Grid.ModelCore.Kernels;
using Grid.ModelCore.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>
/// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, the statistic taken in float32. With <paramref name="useKernels"/> a
/// float32 input runs <see cref="RowKernels.RmsNorm"/> (one pass over plain memory, each row alone in a fixed order,
/// so the same bits in decode and prefill); otherwise six libtorch ops.
/// </summary>
public sealed class RmsNorm(Tensor weight, double eps, bool useKernels = true) : IDisposable
{
    readonly Scalar _eps = eps.ToScalar();   // owned for the norm's lifetime (see Scalars)
    readonly float _epsFloat = (float)eps;

    public Tensor Weight { get; } = weight;

    public long Bytes => WeightBytes.Of(Weight);

    /// <summary>Whether float32 inputs run the C# row kernel.</summary>
    public bool UseKernels { get; } = useKernels && weight.dtype == ScalarType.Float32 && weight.is_contiguous();

    public Tensor Forward(Tensor x)
    {
        if (UseKernels && x.dtype == ScalarType.Float32 && x.NumberOfElements > 0) return KernelForward(x);
        return LibtorchForward(x);
    }

    /// <summary>The libtorch form (the reference the kernel is tested against).</summary>
    public Tensor LibtorchForward(Tensor x)
    {
        bool f32 = x.dtype == ScalarType.Float32;
        var xf = f32 ? x : x.to(ScalarType.Float32);
        var normed = xf * rsqrt(xf.mul(xf).mean([-1L], keepdim: true).Add(_eps));
        return Weight * (f32 ? normed : normed.to(x.dtype));
    }

    unsafe Tensor KernelForward(Tensor x)
    {
        var input = x.contiguous();
        int d = (int)x.shape[^1];
        int rows = (int)(x.NumberOfElements / d);
        var y = empty(x.shape, ScalarType.Float32);
        RowKernels.RmsNorm(TensorMemory.Pointer<float>(input), d, TensorMemory.Pointer<float>(Weight), d, _epsFloat,
            TensorMemory.Pointer<float>(y), d, rows);
        return y;
    }

    public void Dispose()
    {
        Weight.Dispose();
        _eps.Dispose();
    }
}
