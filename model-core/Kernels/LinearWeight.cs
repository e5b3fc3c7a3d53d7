using Grid.ModelCore.Runtime;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// The weight of one linear projection, y = x Wᵀ (+ bias), stored in the compute dtype or in 8 bits
/// (<see cref="QuantizedMatrix"/>). Batches of at most <see cref="SmallBatchMatmul.MaxRows"/> rows (decode) run the
/// C# kernels over the raw weight memory; larger ones (prefill) run libtorch's matmul, over a transient float32
/// copy of the matrix when it is quantized. Runs on the inference thread.
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

    LinearWeight(Tensor? dense, QuantizedMatrix? quantized, int rows, int cols)
    {
        _dense = dense;
        _quantized = quantized;
        Rows = rows;
        Cols = cols;
        if (dense is not null && dense.dtype == ScalarType.Float32) _densePointer = TensorMemory.Pointer<float>(dense);
    }

    /// <summary>Takes ownership of <paramref name="weight"/> [rows, cols]; with a quantization it is quantized and disposed.</summary>
    public static LinearWeight Create(Tensor weight, WeightQuantization quantization)
    {
        int rows = (int)weight.shape[0], cols = (int)weight.shape[1];
        if (quantization == WeightQuantization.None)
        {
            if (weight.is_contiguous()) return new LinearWeight(weight, null, rows, cols);
            Tensor c;
            using (NewDisposeScope()) c = weight.contiguous().DetachFromDisposeScope();
            weight.Dispose();
            return new LinearWeight(c, null, rows, cols);
        }
        try { return new LinearWeight(null, QuantizedMatrix.Quantize(weight, quantization), rows, cols); }
        finally { weight.Dispose(); }
    }

    /// <summary>Wraps an already quantized matrix (an FP8 checkpoint's), taking ownership.</summary>
    public static LinearWeight FromQuantized(QuantizedMatrix matrix) => new(null, matrix, matrix.Rows, matrix.Cols);

    /// <summary>Gate and up stacked by rows into one [2*inter, d] weight; both inputs are consumed.</summary>
    public static LinearWeight StackRows(LinearWeight top, LinearWeight bottom)
    {
        try
        {
            if (top._quantized is { } qt && bottom._quantized is { } qb)
                return FromQuantized(QuantizedMatrix.StackRows(qt, qb));
            if (top._dense is { } dt && bottom._dense is { } db)
            {
                Tensor stacked;
                using (NewDisposeScope()) stacked = cat([dt, db], 0).DetachFromDisposeScope();
                return new LinearWeight(stacked, null, top.Rows + bottom.Rows, top.Cols);
            }
            throw new ArgumentException("stacked weights need the same storage");
        }
        finally
        {
            top.Dispose();
            bottom.Dispose();
        }
    }

    /// <summary>Whether the kernels can take this weight (float32 or 8-bit storage).</summary>
    public bool KernelReady => _quantized is not null || (SmallBatchMatmul.Float32 && _dense!.dtype == ScalarType.Float32);

    /// <summary>x [M, Cols] -> [M, Rows] in x's dtype.</summary>
    public Tensor Forward(Tensor x, Tensor? bias = null)
    {
        long m = x.shape[0];
        if (m > 0 && m <= SmallBatchMatmul.MaxRows && SmallBatchMatmul.Enabled && KernelReady)
            return KernelForward(x, bias);
        if (_dense is not null) return linear(x, _dense, bias);
        using var w = _quantized!.Dequantize();
        var result = x.dtype == ScalarType.Float32 ? linear(x, w, bias) : linear(x.to(ScalarType.Float32), w, bias?.to(ScalarType.Float32)).to(x.dtype);
        return result;
    }

    /// <summary>x [M ≤ <see cref="SmallBatchMatmul.MaxRows"/>, Cols] -> [M, Rows] through the kernels, whatever the storage.</summary>
    public Tensor KernelForward(Tensor x, Tensor? bias = null)
    {
        long m = x.shape[0];
        if (m < 1 || m > SmallBatchMatmul.MaxRows || (_quantized is null && _dense!.dtype != ScalarType.Float32))
            throw new ArgumentException($"the kernels take 1..{SmallBatchMatmul.MaxRows} rows over float32 or 8-bit weights");
        {
            var input = x.dtype == ScalarType.Float32 ? x.contiguous() : x.to(ScalarType.Float32).contiguous();
            var y = empty([m, Rows], ScalarType.Float32);
            SmallBatchMatmul.Run(Job(TensorMemory.Pointer<float>(input), (int)m, TensorMemory.Pointer<float>(y), Rows));
            if (bias is not null) y = y.add_(bias.to(ScalarType.Float32), Scalars.One);
            return x.dtype == ScalarType.Float32 ? y : y.to(x.dtype);
        }
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
