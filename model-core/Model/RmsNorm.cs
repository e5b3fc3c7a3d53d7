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

    /// <summary>The row kernel over plain memory: <paramref name="rows"/> rows of the weight's length, strides in floats
    /// (<see cref="UseKernels"/> must hold; the caller owns the memory).</summary>
    public unsafe void ForwardRows(float* x, long xStride, float* y, long yStride, int rows)
    {
        if (!UseKernels) throw new InvalidOperationException("this norm does not run the row kernel");
        int d = (int)Weight.shape[0];
        RowKernels.RmsNorm(x, xStride, TensorMemory.Pointer<float>(Weight), d, _epsFloat, y, yStride, rows);
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
