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
/// Matrix-vector and small-batch (M ≤ <see cref="MaxRows"/>) matmuls over 8-bit weights, the decode path's kernels;
/// a float32 job is computed by <see cref="InvariantGemm"/> (the same bits as in any other batch). Each call reads every weight once from memory: output rows go four at a time, each group of four
/// weight rows streamed once and reused from the L1 cache for every input row; 8-bit rows are decoded in registers
/// (one input row) or into an L1-resident float scratch of four rows (several input rows), never into a float copy
/// of the matrix. Work is split into blocks of output rows over all the jobs of a call and run on every core
/// (<see cref="KernelParallel"/>), so a MoE layer's active experts go in one call. AVX2+FMA where the CPU has them,
/// scalar code otherwise.
/// </summary>
public static unsafe class SmallBatchMatmul
{
    /// <summary>Input rows up to which the 8-bit kernels run; larger batches (prefill) go through libtorch's matmul. Float32
    /// weights run <see cref="InvariantGemm"/> for any number of rows (here too: a float32 job is computed by it).</summary>
    public const int MaxRows = 16;

    /// <summary>Whether this CPU runs the vector paths.</summary>
    public static bool Vectorized => Avx2.IsSupported && Fma.IsSupported;

    const int RowsPerItem = 32;   // output rows per work item (a multiple of 4)

    [ThreadStatic] static float[]? t_scratch;

    /// <summary>Runs <paramref name="jobs"/> on every core; returns when all outputs are written.</summary>
    public static void Run(MatmulJob[] jobs, int count)
    {
        if (count == 0) return;
        var firstItem = new int[count];
        int items = 0;
        for (int j = 0; j < count; j++)
        {
            firstItem[j] = items;
            items += (jobs[j].N + RowsPerItem - 1) / RowsPerItem;
        }
        var itemJob = new int[items];
        for (int j = 0, i = 0; j < count; j++)
            for (int end = j + 1 < count ? firstItem[j + 1] : items; i < end; i++) itemJob[i] = j;
        KernelParallel.For(items, item =>
        {
            int j = itemJob[item];
            var job = jobs[j];
            int n0 = (item - firstItem[j]) * RowsPerItem, n1 = Math.Min(job.N, n0 + RowsPerItem);
            RunRows(job, n0, n1);
        });
    }

    /// <summary>Runs one job on every core.</summary>
    public static void Run(in MatmulJob job) => Run([job], 1);

    static void RunRows(in MatmulJob job, int n0, int n1)
    {
        if (job.Quantized is null) InvariantGemm.Rows(job, 0, job.M, n0, n1);
        else if (job.M == 1 && Vectorized)
        {
            if (job.Quantized.Format == WeightQuantization.Int8) Q8RowsOneInput<Int8Decoder>(job, n0, n1);
            else Q8RowsOneInput<Fp8Decoder>(job, n0, n1);
        }
        else Q8RowsScratch(job, n0, n1);
    }

    static void Q8RowsScratch(in MatmulJob job, int n0, int n1)
    {
        var q = job.Quantized!;
        int k = job.K;
        var scratch = t_scratch is { } s && s.Length >= 4 * k ? s : t_scratch = GC.AllocateUninitializedArray<float>(Math.Max(4 * k, 4096), pinned: true);
        fixed (float* rows = scratch)
        {
            for (int n = n0; n < n1; n += 4)
            {
                int count = Math.Min(4, n1 - n);
                for (int i = 0; i < count; i++) DecodeRow(q, n + i, rows + (long)i * k);
                float* w0 = rows, w1 = rows + (count > 1 ? k : 0), w2 = rows + (count > 2 ? 2L * k : 0), w3 = rows + (count > 3 ? 3L * k : 0);
                for (int m = 0; m < job.M; m++)
                {
                    Dot4(w0, w1, w2, w3, job.X + (long)m * k, k, out var s0, out var s1, out var s2, out var s3);
                    Store(job.Y + (long)m * job.YStride, n, n1, s0, s1, s2, s3);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* y, int n, int n1, float s0, float s1, float s2, float s3)
    {
        y[n] = s0;
        if (n + 1 < n1) y[n + 1] = s1;
        if (n + 2 < n1) y[n + 2] = s2;
        if (n + 3 < n1) y[n + 3] = s3;
    }

    /// <summary>Four dot products of length <paramref name="k"/> sharing the input <paramref name="x"/>.</summary>
    static void Dot4(float* w0, float* w1, float* w2, float* w3, float* x, int k, out float s0, out float s1, out float s2, out float s3)
    {
        int i = 0;
        s0 = s1 = s2 = s3 = 0;
        if (Vectorized && k >= 8)
        {
            var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (; i <= k - 8; i += 8)
            {
                var xv = Avx.LoadVector256(x + i);
                a0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), xv, a0);
                a1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), xv, a1);
                a2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), xv, a2);
                a3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), xv, a3);
            }
            s0 = Vector256.Sum(a0); s1 = Vector256.Sum(a1); s2 = Vector256.Sum(a2); s3 = Vector256.Sum(a3);
        }
        for (; i < k; i++)
        {
            float xi = x[i];
            s0 += w0[i] * xi; s1 += w1[i] * xi; s2 += w2[i] * xi; s3 += w3[i] * xi;
        }
    }

    interface IDecoder
    {
        /// <summary>8 codes -> values (before the block scale).</summary>
        static abstract Vector256<float> Decode8(byte* codes);
        static abstract float Decode1(byte code);
    }

    readonly struct Int8Decoder : IDecoder
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Decode8(byte* codes) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)codes));
        public static float Decode1(byte code) => (sbyte)code;
    }

    readonly struct Fp8Decoder : IDecoder
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Decode8(byte* codes) => Avx.Multiply(Fp8E4M3.DecodeScaled8(codes), Vector256.Create(Fp8E4M3.DecodeFactor));
        public static float Decode1(byte code) => Fp8E4M3.Decode(code);
    }

    /// <summary>One input row: codes decoded in registers, block sums scaled as each block of <see cref="QuantizedMatrix.BlockCols"/> columns ends.</summary>
    static void Q8RowsOneInput<TDecoder>(in MatmulJob job, int n0, int n1) where TDecoder : struct, IDecoder
    {
        var q = job.Quantized!;
        int k = job.K, blocks = q.BlocksPerRow, blockCols = q.BlockCols;
        float* x = job.X;
        for (int n = n0; n < n1; n += 4)
        {
            long r0 = n, r1 = Math.Min(n + 1, n1 - 1), r2 = Math.Min(n + 2, n1 - 1), r3 = Math.Min(n + 3, n1 - 1);
            byte* c0 = q.Codes + r0 * k, c1 = q.Codes + r1 * k, c2 = q.Codes + r2 * k, c3 = q.Codes + r3 * k;
            float* sc0 = q.Scales + r0 * blocks, sc1 = q.Scales + r1 * blocks, sc2 = q.Scales + r2 * blocks, sc3 = q.Scales + r3 * blocks;
            var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
            for (int b = 0; b < blocks; b++)
            {
                int i = b * blockCols, end = Math.Min(k, i + blockCols);
                var b0 = Vector256<float>.Zero; var b1 = b0; var b2 = b0; var b3 = b0;
                for (; i <= end - 8; i += 8)
                {
                    var xv = Avx.LoadVector256(x + i);
                    b0 = Fma.MultiplyAdd(TDecoder.Decode8(c0 + i), xv, b0);
                    b1 = Fma.MultiplyAdd(TDecoder.Decode8(c1 + i), xv, b1);
                    b2 = Fma.MultiplyAdd(TDecoder.Decode8(c2 + i), xv, b2);
                    b3 = Fma.MultiplyAdd(TDecoder.Decode8(c3 + i), xv, b3);
                }
                a0 = Fma.MultiplyAdd(b0, Vector256.Create(sc0[b]), a0);
                a1 = Fma.MultiplyAdd(b1, Vector256.Create(sc1[b]), a1);
                a2 = Fma.MultiplyAdd(b2, Vector256.Create(sc2[b]), a2);
                a3 = Fma.MultiplyAdd(b3, Vector256.Create(sc3[b]), a3);
                for (; i < end; i++)
                {
                    float xi = x[i];
                    t0 += TDecoder.Decode1(c0[i]) * sc0[b] * xi;
                    t1 += TDecoder.Decode1(c1[i]) * sc1[b] * xi;
                    t2 += TDecoder.Decode1(c2[i]) * sc2[b] * xi;
                    t3 += TDecoder.Decode1(c3[i]) * sc3[b] * xi;
                }
            }
            Store(job.Y, n, n1, Vector256.Sum(a0) + t0, Vector256.Sum(a1) + t1, Vector256.Sum(a2) + t2, Vector256.Sum(a3) + t3);
        }
    }

    /// <summary>Row <paramref name="row"/> of <paramref name="q"/> as float32 values (scales applied) into <paramref name="dst"/>.</summary>
    internal static void DecodeRow(QuantizedMatrix q, int row, float* dst)
    {
        if (!Vectorized)
        {
            for (int c = 0; c < q.Cols; c++) dst[c] = q.Value(row, c);
            return;
        }
        if (q.Format == WeightQuantization.Int8) DecodeRow<Int8Decoder>(q, row, dst);
        else DecodeRow<Fp8Decoder>(q, row, dst);
    }

    static void DecodeRow<TDecoder>(QuantizedMatrix q, int row, float* dst) where TDecoder : struct, IDecoder
    {
        int k = q.Cols;
        byte* codes = q.Codes + (long)row * k;
        float* scales = q.Scales + (long)row * q.BlocksPerRow;
        for (int b = 0; b < q.BlocksPerRow; b++)
        {
            int i = b * q.BlockCols, end = Math.Min(k, i + q.BlockCols);
            var scale = Vector256.Create(scales[b]);
            for (; i <= end - 8; i += 8) Avx.Store(dst + i, Avx.Multiply(TDecoder.Decode8(codes + i), scale));
            for (; i < end; i++) dst[i] = TDecoder.Decode1(codes[i]) * scales[b];
        }
    }
}
