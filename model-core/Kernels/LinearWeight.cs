using Grid.ModelCore.Runtime;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// The weight of one linear projection, y = x Wᵀ (+ bias), stored in the compute dtype or in 8 bits
/// (<see cref="QuantizedMatrix"/>). With <see cref="UseKernels"/> (the default; <see cref="Model.ModelLoadOptions.UseKernels"/>)
/// float32 weights run the batch-invariant GEMM (<see cref="InvariantGemm"/>) for every row count, so a row's result
/// is the same bits in decode and in a prefill chunk, and 8-bit weights run the batch-invariant 8-bit GEMM
/// (<see cref="QuantizedGemm"/>, codes decoded in registers) for every row count too; without the kernels (or in
/// another dtype) libtorch's matmul runs, over a transient float32 copy of the matrix when it is quantized. Runs on the
/// inference thread.
/// </summary>
public sealed unsafe class LinearWeight : IDisposable
{
    readonly Tensor? _dense;              // [Rows, Cols] in the compute dtype
    readonly QuantizedMatrix? _quantized;
    readonly float* _densePointer;        // _dense's data when float32 (the kernels read it)

    public int Rows { get; }
    public int Cols { get; }
    public WeightQuantization Quantization => _quantized?.Format ?? WeightQuantization.None;

    /// <summary>The float weight (null when quantized).</summary>
    public Tensor? Dense => _dense;
    public QuantizedMatrix? Quantized => _quantized;

    /// <summary>Bytes the weight holds.</summary>
    public long Bytes => _quantized?.Bytes ?? _dense!.NumberOfElements * _dense.ElementSize;

    /// <summary>Whether this weight runs Grid's C# kernels (false: libtorch for every batch, for comparisons).</summary>
    public bool UseKernels { get; }

    LinearWeight(Tensor? dense, QuantizedMatrix? quantized, int rows, int cols, bool useKernels)
    {
        UseKernels = useKernels;
        _dense = dense;
        _quantized = quantized;
        Rows = rows;
        Cols = cols;
        if (dense is not null && dense.dtype == ScalarType.Float32) _densePointer = TensorMemory.Pointer<float>(dense);
    }

    /// <summary>Takes ownership of <paramref name="weight"/> [rows, cols]; with a quantization it is quantized and disposed.</summary>
    public static LinearWeight Create(Tensor weight, WeightQuantization quantization, bool useKernels = true)
    {
        int rows = (int)weight.shape[0], cols = (int)weight.shape[1];
        if (quantization == WeightQuantization.None)
        {
            if (weight.is_contiguous()) return new LinearWeight(weight, null, rows, cols, useKernels);
            Tensor c;
            using (NewDisposeScope()) c = weight.contiguous().DetachFromDisposeScope();
            weight.Dispose();
            return new LinearWeight(c, null, rows, cols, useKernels);
        }
        try { return new LinearWeight(null, QuantizedMatrix.Quantize(weight, quantization), rows, cols, useKernels); }
        finally { weight.Dispose(); }
    }

    /// <summary>Wraps an already quantized matrix (an FP8 checkpoint's), taking ownership.</summary>
    public static LinearWeight FromQuantized(QuantizedMatrix matrix, bool useKernels = true) => new(null, matrix, matrix.Rows, matrix.Cols, useKernels);

    /// <summary>Gate and up stacked by rows into one [2*inter, d] weight; both inputs are consumed.</summary>
    public static LinearWeight StackRows(LinearWeight top, LinearWeight bottom)
    {
        try
        {
            if (top._quantized is { } qt && bottom._quantized is { } qb)
                return FromQuantized(QuantizedMatrix.StackRows(qt, qb), top.UseKernels);
            if (top._dense is { } dt && bottom._dense is { } db)
            {
                Tensor stacked;
                using (NewDisposeScope()) stacked = cat([dt, db], 0).DetachFromDisposeScope();
                return new LinearWeight(stacked, null, top.Rows + bottom.Rows, top.Cols, top.UseKernels);
            }
            throw new ArgumentException("stacked weights need the same storage");
        }
        finally
        {
            top.Dispose();
            bottom.Dispose();
        }
    }

    /// <summary>Whether the weight is float32 (the batch-invariant GEMM can take it, any number of rows).</summary>
    public bool IsFloat32 => _densePointer != null;

    /// <summary>Whether the kernels run an <paramref name="rows"/>-row batch over this weight: float32 or 8-bit, any
    /// batch, and only with <see cref="UseKernels"/>.</summary>
    public bool KernelsTake(long rows) => UseKernels && rows > 0 && (IsFloat32 || _quantized is not null);

    /// <summary>x [M, Cols] -> [M, Rows] in x's dtype.</summary>
    public Tensor Forward(Tensor x, Tensor? bias = null)
    {
        if (KernelsTake(x.shape[0])) return KernelForward(x, bias);
        if (_dense is not null) return linear(x, _dense, bias);
        using var w = _quantized!.Dequantize();
        var result = x.dtype == ScalarType.Float32 ? linear(x, w, bias) : linear(x.to(ScalarType.Float32), w, bias?.to(ScalarType.Float32)).to(x.dtype);
        return result;
    }

    /// <summary>x [M, Cols] -> [M, Rows] through the kernels, whatever <see cref="UseKernels"/> says: any M over float32
    /// weights (the batch-invariant GEMM) and over 8-bit ones (the batch-invariant 8-bit GEMM).</summary>
    public Tensor KernelForward(Tensor x, Tensor? bias = null)
    {
        long m = x.shape[0];
        if (m < 1 || (_quantized is null && !IsFloat32))
            throw new ArgumentException("the kernels take float32 or 8-bit weights and at least one row");
        var input = x.dtype == ScalarType.Float32 ? x.contiguous() : x.to(ScalarType.Float32).contiguous();
        var y = empty([m, Rows], ScalarType.Float32);
        var job = Job(TensorMemory.Pointer<float>(input), (int)m, TensorMemory.Pointer<float>(y), Rows);
        if (IsFloat32) InvariantGemm.Run(job);
        else QuantizedGemm.Run(job);
        if (bias is not null) y = y.add_(bias.to(ScalarType.Float32), Scalars.One);
        return x.dtype == ScalarType.Float32 ? y : y.to(x.dtype);
    }

    /// <summary>The kernel job y[m * yStride + n] = x[m] · W[n] for m &lt; <paramref name="m"/>.</summary>
    public MatmulJob Job(float* x, int m, float* y, int yStride) =>
        new(_densePointer, _quantized, Rows, Cols, x, m, y, yStride);

    public void Dispose()
    {
        _dense?.Dispose();
        _quantized?.Dispose();
    }
}
