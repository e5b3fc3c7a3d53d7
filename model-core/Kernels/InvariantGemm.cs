using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Batch-invariant float32 GEMM y[m, n] = Σ_k x[m, k] · W[n, k] (x [M, K] and W [N, K] row-major), for every row
/// count: decode (one row), a decode batch and a prefill chunk give the same bits for the same input row. Every output
/// element is reduced in one fixed order whatever the call: eight lane accumulators, lane j summing
/// x[k]·W[k] for k ≡ j (mod 8) in increasing k with fused multiply-adds, the last K mod 8 columns as one masked
/// step, then the fixed horizontal sum <see cref="Sum4"/>. Tiles (3 input rows × 4 weight rows in registers, blocks
/// of rows per work item) only choose which elements are computed together, never the order inside one; a partial
/// tile repeats a row and drops the duplicate result. Work items (blocks of weight rows × blocks of input rows) run
/// on every core (<see cref="KernelParallel"/>); plain memory only. Without AVX2+FMA a scalar path computes the same
/// lanes in the same order (<see cref="MathF.FusedMultiplyAdd"/>), so results are the same bits there too.
/// </summary>
public static unsafe class InvariantGemm
{
    const int TileInputs = 3, TileWeights = 4;
    const int BlockInputs = 48;        // input rows per work item (a multiple of TileInputs)
    const int SmallBlockWeights = 32;  // weight rows per work item for a decode-sized batch (a multiple of TileWeights)
    const int BlockWeights = 64;       // weight rows per work item otherwise

    /// <summary>Lanes below k mod 8 set: the masked last step over the columns past the last whole 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> TailMask(int k) =>
        Avx2.CompareGreaterThan(Vector256.Create(k & 7), Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7)).AsSingle();

    /// <summary>Runs the float32 <paramref name="jobs"/> (every one with float32 <see cref="MatmulJob.Weights"/>) on every core.</summary>
    public static void Run(MatmulJob[] jobs, int count)
    {
        if (count == 0) return;
        // Work items: per job, blocks of weight rows x blocks of input rows.
        var firstItem = new int[count + 1];
        for (int j = 0; j < count; j++)
        {
            var job = jobs[j];
            if (job.Quantized is not null || job.Weights == null) throw new ArgumentException("the invariant GEMM takes float32 weights");
            firstItem[j + 1] = firstItem[j] + WeightBlocks(job) * InputBlocks(job);
        }
        int items = firstItem[count];
        var itemJob = new int[items];
        for (int j = 0; j < count; j++)
            for (int i = firstItem[j]; i < firstItem[j + 1]; i++) itemJob[i] = j;
        KernelParallel.For(items, item =>
        {
            int j = itemJob[item];
            var job = jobs[j];
            int local = item - firstItem[j], inputBlocks = InputBlocks(job), block = BlockWeightsFor(job);
            int n0 = local / inputBlocks * block, m0 = local % inputBlocks * BlockInputs;
            Rows(job, m0, Math.Min(job.M, m0 + BlockInputs), n0, Math.Min(job.N, n0 + block));
        });
    }

    /// <summary>Runs one float32 job on every core.</summary>
    public static void Run(in MatmulJob job) => Run([job], 1);

    static int BlockWeightsFor(in MatmulJob job) => job.M <= SmallBatchMatmul.MaxRows ? SmallBlockWeights : BlockWeights;
    static int WeightBlocks(in MatmulJob job) { int b = BlockWeightsFor(job); return (job.N + b - 1) / b; }
    static int InputBlocks(in MatmulJob job) => (job.M + BlockInputs - 1) / BlockInputs;

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of <paramref name="job"/> on this thread.</summary>
    public static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1)
    {
        int k = job.K;
        for (int m = m0; m < m1; m += TileInputs)
        {
            int inputs = Math.Min(TileInputs, m1 - m);
            float* x0 = job.X + (long)m * k;
            float* x1 = job.X + (long)(m + Math.Min(1, inputs - 1)) * k;
            float* x2 = job.X + (long)(m + Math.Min(2, inputs - 1)) * k;
            float* y0 = job.Y + (long)m * job.YStride;
            for (int n = n0; n < n1; n += TileWeights)
            {
                float* w0 = job.Weights + (long)n * k;
                float* w1 = job.Weights + (long)Math.Min(n + 1, n1 - 1) * k;
                float* w2 = job.Weights + (long)Math.Min(n + 2, n1 - 1) * k;
                float* w3 = job.Weights + (long)Math.Min(n + 3, n1 - 1) * k;
                int count = Math.Min(TileWeights, n1 - n);
                if (!Vectorized) ScalarTile(x0, x1, x2, inputs, w0, w1, w2, w3, count, k, y0 + n, job.YStride);
                else if (inputs == 1) Tile1x4(x0, w0, w1, w2, w3, count, k, y0 + n);
                else Tile3x4(x0, x1, x2, inputs, w0, w1, w2, w3, count, k, y0 + n, job.YStride);
            }
        }
    }

    /// <summary>Whether this CPU runs the vector paths.</summary>
    public static bool Vectorized => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>The fixed horizontal sums of four accumulators [a, b, c, d]: per accumulator v, h_i = v_i + v_(i+4) for
    /// i &lt; 4, then (h0 + h1) + (h2 + h3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var hab = Avx.Add(Avx.Permute2x128(a, b, 0x20), Avx.Permute2x128(a, b, 0x31));   // [h(a) | h(b)]
        var hcd = Avx.Add(Avx.Permute2x128(c, d, 0x20), Avx.Permute2x128(c, d, 0x31));   // [h(c) | h(d)]
        var p = Avx.HorizontalAdd(hab, hcd);   // [a0+a1, a2+a3, c0+c1, c2+c3 | b0+b1, b2+b3, d0+d1, d2+d3]
        var q = Avx.HorizontalAdd(p, p);       // [a, c, a, c | b, d, b, d]
        return Sse.UnpackLow(q.GetLower(), q.GetUpper());                                 // [a, b, c, d]
    }

    static void Tile1x4(float* x, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        for (; i <= k - 8; i += 8)
        {
            var xv = Avx.LoadVector256(x + i);
            a0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), xv, a3);
        }
        if (i < k)
        {
            var mask = TailMask(k);
            var xv = Avx.MaskLoad(x + i, mask);
            a0 = Fma.MultiplyAdd(Avx.MaskLoad(w0 + i, mask), xv, a0);
            a1 = Fma.MultiplyAdd(Avx.MaskLoad(w1 + i, mask), xv, a1);
            a2 = Fma.MultiplyAdd(Avx.MaskLoad(w2 + i, mask), xv, a2);
            a3 = Fma.MultiplyAdd(Avx.MaskLoad(w3 + i, mask), xv, a3);
        }
        Store(y, count, Sum4(a0, a1, a2, a3));
    }

    static void Tile3x4(float* x0, float* x1, float* x2, int inputs, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y, int yStride)
    {
        var a00 = Vector256<float>.Zero; var a01 = a00; var a02 = a00; var a03 = a00;
        var a10 = a00; var a11 = a00; var a12 = a00; var a13 = a00;
        var a20 = a00; var a21 = a00; var a22 = a00; var a23 = a00;
        int i = 0;
        for (; i <= k - 8; i += 8)
        {
            var v0 = Avx.LoadVector256(x0 + i);
            var v1 = Avx.LoadVector256(x1 + i);
            var v2 = Avx.LoadVector256(x2 + i);
            var w = Avx.LoadVector256(w0 + i);
            a00 = Fma.MultiplyAdd(w, v0, a00); a10 = Fma.MultiplyAdd(w, v1, a10); a20 = Fma.MultiplyAdd(w, v2, a20);
            w = Avx.LoadVector256(w1 + i);
            a01 = Fma.MultiplyAdd(w, v0, a01); a11 = Fma.MultiplyAdd(w, v1, a11); a21 = Fma.MultiplyAdd(w, v2, a21);
            w = Avx.LoadVector256(w2 + i);
            a02 = Fma.MultiplyAdd(w, v0, a02); a12 = Fma.MultiplyAdd(w, v1, a12); a22 = Fma.MultiplyAdd(w, v2, a22);
            w = Avx.LoadVector256(w3 + i);
            a03 = Fma.MultiplyAdd(w, v0, a03); a13 = Fma.MultiplyAdd(w, v1, a13); a23 = Fma.MultiplyAdd(w, v2, a23);
        }
        if (i < k)
        {
            var mask = TailMask(k);
            var v0 = Avx.MaskLoad(x0 + i, mask);
            var v1 = Avx.MaskLoad(x1 + i, mask);
            var v2 = Avx.MaskLoad(x2 + i, mask);
            var w = Avx.MaskLoad(w0 + i, mask);
            a00 = Fma.MultiplyAdd(w, v0, a00); a10 = Fma.MultiplyAdd(w, v1, a10); a20 = Fma.MultiplyAdd(w, v2, a20);
            w = Avx.MaskLoad(w1 + i, mask);
            a01 = Fma.MultiplyAdd(w, v0, a01); a11 = Fma.MultiplyAdd(w, v1, a11); a21 = Fma.MultiplyAdd(w, v2, a21);
            w = Avx.MaskLoad(w2 + i, mask);
            a02 = Fma.MultiplyAdd(w, v0, a02); a12 = Fma.MultiplyAdd(w, v1, a12); a22 = Fma.MultiplyAdd(w, v2, a22);
            w = Avx.MaskLoad(w3 + i, mask);
            a03 = Fma.MultiplyAdd(w, v0, a03); a13 = Fma.MultiplyAdd(w, v1, a13); a23 = Fma.MultiplyAdd(w, v2, a23);
        }
        Store(y, count, Sum4(a00, a01, a02, a03));
        if (inputs > 1) Store(y + yStride, count, Sum4(a10, a11, a12, a13));
        if (inputs > 2) Store(y + 2L * yStride, count, Sum4(a20, a21, a22, a23));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* y, int count, Vector128<float> sums)
    {
        if (count == 4)
        {
            Sse.Store(y, sums);
            return;
        }
        y[0] = sums.GetElement(0);
        if (count > 1) y[1] = sums.GetElement(1);
        if (count > 2) y[2] = sums.GetElement(2);
    }

    /// <summary>The vector paths' arithmetic lane by lane: the same bits without AVX2.</summary>
    static void ScalarTile(float* x0, float* x1, float* x2, int inputs, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y, int yStride)
    {
        var lanes = stackalloc float[8];
        for (int r = 0; r < inputs; r++)
        {
            float* x = r == 0 ? x0 : r == 1 ? x1 : x2;
            for (int c = 0; c < count; c++)
            {
                float* w = c == 0 ? w0 : c == 1 ? w1 : c == 2 ? w2 : w3;
                for (int l = 0; l < 8; l++) lanes[l] = 0;
                for (int i = 0; i < k; i++) lanes[i & 7] = MathF.FusedMultiplyAdd(w[i], x[i], lanes[i & 7]);
                // Masked-out lanes of the last step add 0 * 0, which leaves a lane's value as it is except -0 -> +0.
                if ((k & 7) != 0)
                    for (int l = k & 7; l < 8; l++) lanes[l] = MathF.FusedMultiplyAdd(0f, 0f, lanes[l]);
                float h0 = lanes[0] + lanes[4], h1 = lanes[1] + lanes[5], h2 = lanes[2] + lanes[6], h3 = lanes[3] + lanes[7];
                y[(long)r * yStride + c] = (h0 + h1) + (h2 + h3);
            }
        }
    }
}
