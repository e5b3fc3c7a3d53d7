using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// One small-batch matmul for the kernels: y[m, n] = sum_k x[m, k] * W[n, k] for m &lt; M, n &lt; N, with x [M, K]
/// row-major, y rows <see cref="YStride"/> floats apart, and W either float32 at <see cref="Weights"/>, packed in
/// column panels (<see cref="PackedWeight"/>: [N/32][K][32]), or the 8-bit <see cref="Quantized"/>.
/// </summary>
public readonly unsafe struct MatmulJob
{
    public readonly float* Weights;
    public readonly QuantizedMatrix? Quantized;
    public readonly int N, K, M, YStride;
    public readonly float* X, Y;

    public MatmulJob(float* weights, QuantizedMatrix? quantized, int n, int k, float* x, int m, float* y, int yStride)
    {
        Weights = weights;
        Quantized = quantized;
        N = n;
        K = k;
        X = x;
        M = m;
        Y = y;
        YStride = yStride;
    }
}

/// <summary>
/// The kernels' entry for a call's matmul jobs over 8-bit weights (any number of input rows; float32 jobs in the same
/// call go through <see cref="InvariantGemm"/>): <see cref="QuantizedGemm"/> computes them, batch-invariantly, reading
/// the codes in place (no float copy of a matrix). Also the row decoder behind <see cref="QuantizedMatrix.Dequantize"/>.
/// </summary>
public static unsafe class SmallBatchMatmul
{
    /// <summary>Input rows of a decode-sized batch (work items then split the weight rows finer).</summary>
    public const int MaxRows = 16;

    /// <summary>Whether this CPU runs the vector paths of the 8-bit kernels (AVX-512; scalar code otherwise, same bits).</summary>
    public static bool Vectorized => QuantizedGemm.Vectorized;

    /// <summary>Runs <paramref name="jobs"/> on every core; returns when all outputs are written.</summary>
    public static void Run(MatmulJob[] jobs, int count) => QuantizedGemm.Run(jobs, count);

    /// <summary>Runs one job on every core.</summary>
    public static void Run(in MatmulJob job) => QuantizedGemm.Run(job);

    /// <summary>Row <paramref name="row"/> of <paramref name="q"/> as float32 values decode(code) * scale into
    /// <paramref name="dst"/> (one multiply per value: the same bits on every path).</summary>
    internal static void DecodeRow(QuantizedMatrix q, int row, float* dst)
    {
        if (!Avx512F.IsSupported || q.HasNaNCodes)
        {
            for (int c = 0; c < q.Cols; c++) dst[c] = q.Value(row, c);
            return;
        }
        int k = q.Cols;
        byte* codes = q.Codes + (long)row * k;
        float* scales = q.Scales + (long)row * q.BlocksPerRow;
        bool int8 = q.Format == WeightQuantization.Int8;
        for (int b = 0; b < q.BlocksPerRow; b++)
        {
            int i = b * q.BlockCols, end = Math.Min(k, i + q.BlockCols);
            float scale = scales[b];
            var s = Vector512.Create(scale);
            for (; i <= end - 16; i += 16)
            {
                var v = int8 ? Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)codes + i))) : Fp8E4M3.Decode16(codes + i);
                (v * s).Store(dst + i);
            }
            for (; i < end; i++) dst[i] = (int8 ? (sbyte)codes[i] : Fp8E4M3.Decode(codes[i])) * scale;
        }
    }
}
