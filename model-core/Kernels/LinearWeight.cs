using Grid.ModelCore.Runtime;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// The weight of one linear projection, y = x Wᵀ (+ bias), stored in the compute dtype or in 8 bits
/// (<see cref="QuantizedMatrix"/>). With <see cref="UseKernels"/> (the default; <see cref="Model.ModelLoadOptions.UseKernels"/>)
/// float32 weights are packed into column panels at load (<see cref="PackedWeight"/>, replacing the [Rows, Cols] tensor)
/// and run the batch-invariant GEMM (<see cref="InvariantGemm"/>) for every row count, so a row's result is the same
/// bits in decode and in a prefill chunk, and 8-bit weights run the batch-invariant 8-bit GEMM
/// (<see cref="QuantizedGemm"/>, codes decoded in registers) for every row count too; without the kernels (or in
/// another dtype) libtorch's matmul runs, over a transient float32 copy of the matrix when it is quantized or packed.
/// Runs on the inference thread.
/// </summary>
public sealed unsafe class LinearWeight : IDisposable
{
    readonly Tensor? _dense;              // [Rows, Cols] in the compute dtype (without the kernels, or not float32)
    readonly PackedWeight? _packed;       // float32 with the kernels: column panels of Wᵀ
    readonly QuantizedMatrix? _quantized;

    public int Rows { get; }
    public int Cols { get; }
    public WeightQuantization Quantization => _quantized?.Format ?? WeightQuantization.None;

    public QuantizedMatrix? Quantized => _quantized;

    /// <summary>Bytes the weight holds.</summary>
    public long Bytes => _quantized?.Bytes ?? _packed?.Bytes ?? _dense!.NumberOfElements * _dense.ElementSize;

    /// <summary>Whether this weight runs Grid's C# kernels (false: libtorch for every batch, for comparisons).</summary>
    public bool UseKernels { get; }

    LinearWeight(Tensor? dense, PackedWeight? packed, QuantizedMatrix? quantized, int rows, int cols, bool useKernels)
    {
        UseKernels = useKernels;
        _dense = dense;
        _packed = packed;
        _quantized = quantized;
        Rows = rows;
        Cols = cols;
    }

    /// <summary>Takes ownership of <paramref name="weight"/> [rows, cols]; with a quantization it is quantized and disposed,
    /// float32 with the kernels it is packed and disposed.</summary>
    public static LinearWeight Create(Tensor weight, WeightQuantization quantization, bool useKernels = true)
    {
        int rows = (int)weight.shape[0], cols = (int)weight.shape[1];
        if (quantization == WeightQuantization.None)
        {
            if (useKernels && weight.dtype == ScalarType.Float32 && rows > 0 && cols > 0)
            {
                try
                {
                    using var scope = NewDisposeScope();
                    var c = weight.contiguous();
                    return new LinearWeight(null, PackedWeight.Pack(TensorMemory.Pointer<float>(c), rows, cols), null, rows, cols, useKernels);
                }
                finally { weight.Dispose(); }
            }
            if (weight.is_contiguous()) return new LinearWeight(weight, null, null, rows, cols, useKernels);
            Tensor contiguous;
            using (NewDisposeScope()) contiguous = weight.contiguous().DetachFromDisposeScope();
            weight.Dispose();
            return new LinearWeight(contiguous, null, null, rows, cols, useKernels);
        }
        try { return new LinearWeight(null, null, QuantizedMatrix.Quantize(weight, quantization), rows, cols, useKernels); }
        finally { weight.Dispose(); }
    }

    /// <summary>Wraps an already quantized matrix (an FP8 checkpoint's), taking ownership.</summary>
    public static LinearWeight FromQuantized(QuantizedMatrix matrix, bool useKernels = true) => new(null, null, matrix, matrix.Rows, matrix.Cols, useKernels);

    /// <summary>Gate and up stacked by rows into one [2*inter, d] weight; both inputs are consumed.</summary>
    public static LinearWeight StackRows(LinearWeight top, LinearWeight bottom)
    {
        try
        {
            if (top._quantized is { } qt && bottom._quantized is { } qb)
                return FromQuantized(QuantizedMatrix.StackRows(qt, qb), top.UseKernels);
            if (top._quantized is null && bottom._quantized is null)
            {
                Tensor stacked;
                using (NewDisposeScope())
                {
                    using Tensor t = top.Unpack(), b = bottom.Unpack();
                    stacked = cat([t, b], 0).DetachFromDisposeScope();
                }
                return Create(stacked, WeightQuantization.None, top.UseKernels);
            }
            throw new ArgumentException("stacked weights need the same storage");
        }
        finally
        {
            top.Dispose();
            bottom.Dispose();
        }
    }

    /// <summary>The weight as a new [Rows, Cols] tensor (the caller disposes it): the stored dtype, float32 from the
    /// packed panels or from 8 bits (dequantized). For tests, export and the libtorch fallback.</summary>
    public Tensor Unpack()
    {
        if (_quantized is not null) return _quantized.Dequantize();
        if (_dense is not null) return _dense.clone();
        var w = empty([Rows, Cols], ScalarType.Float32);
        _packed!.Unpack(TensorMemory.Pointer<float>(w));
        return w;
    }

    /// <summary>Whether the weight is float32 packed for the batch-invariant GEMM (it can take any number of rows).</summary>
    public bool IsFloat32 => _packed is not null;

    /// <summary>Whether the kernels run an <paramref name="rows"/>-row batch over this weight: float32 or 8-bit, any
    /// batch, and only with <see cref="UseKernels"/>.</summary>
    public bool KernelsTake(long rows) => UseKernels && rows > 0 && (IsFloat32 || _quantized is not null);

    /// <summary>x [M, Cols] -> [M, Rows] in x's dtype.</summary>
    public Tensor Forward(Tensor x, Tensor? bias = null)
    {
        if (KernelsTake(x.shape[0])) return KernelForward(x, bias);
        if (_dense is not null) return linear(x, _dense, bias);
        if (_packed is not null)
        {
            using var dense = Unpack();
            return x.dtype == ScalarType.Float32 ? linear(x, dense, bias) : linear(x.to(ScalarType.Float32), dense, bias?.to(ScalarType.Float32)).to(x.dtype);
        }
        using var w = _quantized!.Dequantize();
        var result = x.dtype == ScalarType.Float32 ? linear(x, w, bias) : linear(x.to(ScalarType.Float32), w, bias?.to(ScalarType.Float32)).to(x.dtype);
        return result;
    }

    /// <summary>x [M, Cols] -> [M, Rows] through the kernels, whatever <see cref="UseKernels"/> says: any M over float32
    /// weights (the batch-invariant GEMM; a weight kept unpacked is packed for the call) and over 8-bit ones (the
    /// batch-invariant 8-bit GEMM; <paramref name="scalar"/>: its scalar code, the same bits, for tests).</summary>
    public Tensor KernelForward(Tensor x, Tensor? bias = null, bool scalar = false)
    {
        long m = x.shape[0];
        bool float32 = IsFloat32 || _dense is { dtype: ScalarType.Float32 };
        if (m < 1 || (_quantized is null && !float32))
            throw new ArgumentException("the kernels take float32 or 8-bit weights and at least one row");
        var input = x.dtype == ScalarType.Float32 ? x.contiguous() : x.to(ScalarType.Float32).contiguous();
        var y = empty([m, Rows], ScalarType.Float32);
        float* xp = TensorMemory.Pointer<float>(input), yp = TensorMemory.Pointer<float>(y);
        if (_quantized is not null) QuantizedGemm.Run(Job(xp, (int)m, yp, Rows), scalar);
        else if (_packed is not null) InvariantGemm.Run(Job(xp, (int)m, yp, Rows));
        else
        {
            using var packed = PackedWeight.Pack(TensorMemory.Pointer<float>(_dense!), Rows, Cols);
            InvariantGemm.Run(new MatmulJob(packed.Data, null, Rows, Cols, xp, (int)m, yp, Rows));
        }
        if (bias is not null) y = y.add_(bias.to(ScalarType.Float32), Scalars.One);
        return x.dtype == ScalarType.Float32 ? y : y.to(x.dtype);
    }

    /// <summary>The kernel job y[m * yStride + n] = x[m] · W[n] for m &lt; <paramref name="m"/> (8-bit or packed float32 weights).</summary>
    public MatmulJob Job(float* x, int m, float* y, int yStride)
    {
        if (_quantized is null && _packed is null) throw new InvalidOperationException("kernel jobs need packed float32 or 8-bit weights");
        return new(_packed is null ? null : _packed.Data, _quantized, Rows, Cols, x, m, y, yStride);
    }

    public void Dispose()
    {
        _dense?.Dispose();
        _packed?.Dispose();
        _quantized?.Dispose();
    }
}
