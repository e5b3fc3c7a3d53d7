using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

using Grid.ModelCore.Kernels;

namespace Grid.Benchmarks;


/// <summary>
/// The previous batch-invariant GEMM (before packed panels), kept for the kernel benchmark's comparison: MatmulJob.Weights
/// here is the dense W [N, K], not panels.
/// Batch-invariant float32 GEMM y[m, n] = Σ_k x[m, k] · W[n, k] (x [M, K] and W [N, K] row-major), for every row
/// count: decode (one row), a decode batch and a prefill chunk give the same bits for the same input row. Every output
/// element is reduced in one fixed order whatever the call: sixteen lane accumulators, lane j summing x[k]·W[k] for
/// k ≡ j (mod 16) in increasing k with fused multiply-adds, the last K mod 16 columns as one masked step (the other
/// lanes add 0·0), then the fixed horizontal sum: h8_i = lane_i + lane_(i+8), h4_i = h8_i + h8_(i+4), then
/// (h4_0 + h4_1) + (h4_2 + h4_3) (<see cref="Sum4"/>). Tiles (up to 6 input rows × 4 weight rows in AVX-512
/// registers, blocks of rows per work item) only choose which elements are computed together, never the order inside
/// one; a partial tile of weight rows repeats a row and drops the duplicate result. Work items (blocks of weight rows ×
/// blocks of input rows) run on every core (<see cref="KernelParallel"/>); plain memory only. Without AVX-512 the AVX2
/// path keeps each element's sixteen lanes in two 8-lane accumulators, and the scalar path runs the lanes one by one
/// (<see cref="MathF.FusedMultiplyAdd"/>): the same operations in the same order, so the same bits on every CPU.
/// </summary>
public static unsafe class LaneGemm
{
    const int TileWeights = 4, MaxTileInputs = 6;
    const int BlockInputs = 48;        // input rows per work item (a multiple of MaxTileInputs)
    const int SmallBlockWeights = 32;  // weight rows per work item for a decode-sized batch (a multiple of TileWeights)
    const int BlockWeights = 64;       // weight rows per work item otherwise

    /// <summary>The fastest path this CPU runs.</summary>
    public static GemmPath BestPath { get; } =
        Avx512F.IsSupported ? GemmPath.Avx512 : Avx2.IsSupported && Fma.IsSupported ? GemmPath.Avx2 : GemmPath.Scalar;

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

    static int BlockWeightsFor(in MatmulJob job) => job.M <= QuantizedGemm.DecodeRows ? SmallBlockWeights : BlockWeights;
    static int WeightBlocks(in MatmulJob job) { int b = BlockWeightsFor(job); return (job.N + b - 1) / b; }
    static int InputBlocks(in MatmulJob job) => (job.M + BlockInputs - 1) / BlockInputs;

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of <paramref name="job"/> on this thread.</summary>
    public static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1) => Rows(job, m0, m1, n0, n1, BestPath);

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of <paramref name="job"/> on this thread through <paramref name="path"/>
    /// (which the CPU must support).</summary>
    public static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1, GemmPath path)
    {
        int k = job.K;
        long xs = k, ys = job.YStride;
        for (int m = m0; m < m1;)
        {
            int inputs = path == GemmPath.Avx512 ? Math.Min(MaxTileInputs, m1 - m) : 1;
            float* x = job.X + m * xs, y = job.Y + m * ys;
            for (int n = n0; n < n1; n += TileWeights)
            {
                float* w0 = job.Weights + (long)n * k;
                float* w1 = job.Weights + (long)Math.Min(n + 1, n1 - 1) * k;
                float* w2 = job.Weights + (long)Math.Min(n + 2, n1 - 1) * k;
                float* w3 = job.Weights + (long)Math.Min(n + 3, n1 - 1) * k;
                int count = Math.Min(TileWeights, n1 - n);
                switch (path)
                {
                    case GemmPath.Avx512:
                        switch (inputs)
                        {
                            case 1: Tile512<R1>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                            case 2: Tile512<R2>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                            case 3: Tile512<R3>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                            case 4: Tile512<R4>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                            case 5: Tile512<R5>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                            default: Tile512<R6>(x, xs, w0, w1, w2, w3, count, k, y + n, ys); break;
                        }
                        break;
                    case GemmPath.Avx2: Tile256(x, w0, w1, w2, w3, count, k, y + n); break;
                    default: ScalarTile(x, w0, w1, w2, w3, count, k, y + n); break;
                }
            }
            m += inputs;
        }
    }

    interface IRows { static abstract int Count { get; } }
    readonly struct R1 : IRows { public static int Count => 1; }
    readonly struct R2 : IRows { public static int Count => 2; }
    readonly struct R3 : IRows { public static int Count => 3; }
    readonly struct R4 : IRows { public static int Count => 4; }
    readonly struct R5 : IRows { public static int Count => 5; }
    readonly struct R6 : IRows { public static int Count => 6; }

    /// <summary>Lanes below <paramref name="r"/> (0..8) set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Mask8(int r) =>
        Avx2.CompareGreaterThan(Vector256.Create(r), Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7)).AsSingle();

    /// <summary>The first <paramref name="rest"/> (1..15) floats at <paramref name="p"/>, zeros after; reads nothing past them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void LoadTail(float* p, int rest, out Vector256<float> lo, out Vector256<float> hi)
    {
        lo = Avx.MaskLoad(p, Mask8(Math.Min(rest, 8)));
        hi = rest > 8 ? Avx.MaskLoad(p + 8, Mask8(rest - 8)) : Vector256<float>.Zero;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> LoadTail512(float* p, int rest)
    {
        LoadTail(p, rest, out var lo, out var hi);
        return Vector512.Create(lo, hi);
    }

    /// <summary>The fixed horizontal sums of four accumulators [a, b, c, d] already folded to eight lanes (h8): per
    /// accumulator v, h4_i = v_i + v_(i+4) for i &lt; 4, then (h4_0 + h4_1) + (h4_2 + h4_3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var hab = Avx.Add(Avx.Permute2x128(a, b, 0x20), Avx.Permute2x128(a, b, 0x31));   // [h4(a) | h4(b)]
        var hcd = Avx.Add(Avx.Permute2x128(c, d, 0x20), Avx.Permute2x128(c, d, 0x31));   // [h4(c) | h4(d)]
        var p = Avx.HorizontalAdd(hab, hcd);   // [a0+a1, a2+a3, c0+c1, c2+c3 | b0+b1, b2+b3, d0+d1, d2+d3]
        var q = Avx.HorizontalAdd(p, p);       // [a, c, a, c | b, d, b, d]
        return Sse.UnpackLow(q.GetLower(), q.GetUpper());                                 // [a, b, c, d]
    }

    /// <summary>Sixteen lanes folded to eight: h8_i = lane_i + lane_(i+8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Fold(Vector512<float> v) => Avx.Add(v.GetLower(), v.GetUpper());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d) =>
        Sum4(Fold(a), Fold(b), Fold(c), Fold(d));

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

    /// <summary>TRows.Count input rows (<paramref name="xs"/> floats apart) x 4 weight rows, 16 lanes per element in one
    /// AVX-512 register each.</summary>
    static void Tile512<TRows>(float* x, long xs, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y, long ys)
        where TRows : struct, IRows
    {
        int rows = TRows.Count;
        float* x0 = x, x1 = x + (rows > 1 ? xs : 0), x2 = x + (rows > 2 ? 2 * xs : 0);
        float* x3 = x + (rows > 3 ? 3 * xs : 0), x4 = x + (rows > 4 ? 4 * xs : 0), x5 = x + (rows > 5 ? 5 * xs : 0);
        var a00 = Vector512<float>.Zero; var a01 = a00; var a02 = a00; var a03 = a00;
        var a10 = a00; var a11 = a00; var a12 = a00; var a13 = a00;
        var a20 = a00; var a21 = a00; var a22 = a00; var a23 = a00;
        var a30 = a00; var a31 = a00; var a32 = a00; var a33 = a00;
        var a40 = a00; var a41 = a00; var a42 = a00; var a43 = a00;
        var a50 = a00; var a51 = a00; var a52 = a00; var a53 = a00;
        int i = 0;
        for (; i <= k - 16; i += 16)
        {
            var v0 = Vector512.Load(x0 + i);
            var v1 = rows > 1 ? Vector512.Load(x1 + i) : default;
            var v2 = rows > 2 ? Vector512.Load(x2 + i) : default;
            var v3 = rows > 3 ? Vector512.Load(x3 + i) : default;
            var v4 = rows > 4 ? Vector512.Load(x4 + i) : default;
            var v5 = rows > 5 ? Vector512.Load(x5 + i) : default;
            var w = Vector512.Load(w0 + i);
            a00 = Avx512F.FusedMultiplyAdd(w, v0, a00);
            if (rows > 1) a10 = Avx512F.FusedMultiplyAdd(w, v1, a10);
            if (rows > 2) a20 = Avx512F.FusedMultiplyAdd(w, v2, a20);
            if (rows > 3) a30 = Avx512F.FusedMultiplyAdd(w, v3, a30);
            if (rows > 4) a40 = Avx512F.FusedMultiplyAdd(w, v4, a40);
            if (rows > 5) a50 = Avx512F.FusedMultiplyAdd(w, v5, a50);
            w = Vector512.Load(w1 + i);
            a01 = Avx512F.FusedMultiplyAdd(w, v0, a01);
            if (rows > 1) a11 = Avx512F.FusedMultiplyAdd(w, v1, a11);
            if (rows > 2) a21 = Avx512F.FusedMultiplyAdd(w, v2, a21);
            if (rows > 3) a31 = Avx512F.FusedMultiplyAdd(w, v3, a31);
            if (rows > 4) a41 = Avx512F.FusedMultiplyAdd(w, v4, a41);
            if (rows > 5) a51 = Avx512F.FusedMultiplyAdd(w, v5, a51);
            w = Vector512.Load(w2 + i);
            a02 = Avx512F.FusedMultiplyAdd(w, v0, a02);
            if (rows > 1) a12 = Avx512F.FusedMultiplyAdd(w, v1, a12);
            if (rows > 2) a22 = Avx512F.FusedMultiplyAdd(w, v2, a22);
            if (rows > 3) a32 = Avx512F.FusedMultiplyAdd(w, v3, a32);
            if (rows > 4) a42 = Avx512F.FusedMultiplyAdd(w, v4, a42);
            if (rows > 5) a52 = Avx512F.FusedMultiplyAdd(w, v5, a52);
            w = Vector512.Load(w3 + i);
            a03 = Avx512F.FusedMultiplyAdd(w, v0, a03);
            if (rows > 1) a13 = Avx512F.FusedMultiplyAdd(w, v1, a13);
            if (rows > 2) a23 = Avx512F.FusedMultiplyAdd(w, v2, a23);
            if (rows > 3) a33 = Avx512F.FusedMultiplyAdd(w, v3, a33);
            if (rows > 4) a43 = Avx512F.FusedMultiplyAdd(w, v4, a43);
            if (rows > 5) a53 = Avx512F.FusedMultiplyAdd(w, v5, a53);
        }
        if (i < k)
        {
            int rest = k - i;
            var v0 = LoadTail512(x0 + i, rest);
            var v1 = rows > 1 ? LoadTail512(x1 + i, rest) : default;
            var v2 = rows > 2 ? LoadTail512(x2 + i, rest) : default;
            var v3 = rows > 3 ? LoadTail512(x3 + i, rest) : default;
            var v4 = rows > 4 ? LoadTail512(x4 + i, rest) : default;
            var v5 = rows > 5 ? LoadTail512(x5 + i, rest) : default;
            var w = LoadTail512(w0 + i, rest);
            a00 = Avx512F.FusedMultiplyAdd(w, v0, a00);
            if (rows > 1) a10 = Avx512F.FusedMultiplyAdd(w, v1, a10);
            if (rows > 2) a20 = Avx512F.FusedMultiplyAdd(w, v2, a20);
            if (rows > 3) a30 = Avx512F.FusedMultiplyAdd(w, v3, a30);
            if (rows > 4) a40 = Avx512F.FusedMultiplyAdd(w, v4, a40);
            if (rows > 5) a50 = Avx512F.FusedMultiplyAdd(w, v5, a50);
            w = LoadTail512(w1 + i, rest);
            a01 = Avx512F.FusedMultiplyAdd(w, v0, a01);
            if (rows > 1) a11 = Avx512F.FusedMultiplyAdd(w, v1, a11);
            if (rows > 2) a21 = Avx512F.FusedMultiplyAdd(w, v2, a21);
            if (rows > 3) a31 = Avx512F.FusedMultiplyAdd(w, v3, a31);
            if (rows > 4) a41 = Avx512F.FusedMultiplyAdd(w, v4, a41);
            if (rows > 5) a51 = Avx512F.FusedMultiplyAdd(w, v5, a51);
            w = LoadTail512(w2 + i, rest);
            a02 = Avx512F.FusedMultiplyAdd(w, v0, a02);
            if (rows > 1) a12 = Avx512F.FusedMultiplyAdd(w, v1, a12);
            if (rows > 2) a22 = Avx512F.FusedMultiplyAdd(w, v2, a22);
            if (rows > 3) a32 = Avx512F.FusedMultiplyAdd(w, v3, a32);
            if (rows > 4) a42 = Avx512F.FusedMultiplyAdd(w, v4, a42);
            if (rows > 5) a52 = Avx512F.FusedMultiplyAdd(w, v5, a52);
            w = LoadTail512(w3 + i, rest);
            a03 = Avx512F.FusedMultiplyAdd(w, v0, a03);
            if (rows > 1) a13 = Avx512F.FusedMultiplyAdd(w, v1, a13);
            if (rows > 2) a23 = Avx512F.FusedMultiplyAdd(w, v2, a23);
            if (rows > 3) a33 = Avx512F.FusedMultiplyAdd(w, v3, a33);
            if (rows > 4) a43 = Avx512F.FusedMultiplyAdd(w, v4, a43);
            if (rows > 5) a53 = Avx512F.FusedMultiplyAdd(w, v5, a53);
        }
        Store(y, count, Sum4(a00, a01, a02, a03));
        if (rows > 1) Store(y + ys, count, Sum4(a10, a11, a12, a13));
        if (rows > 2) Store(y + 2 * ys, count, Sum4(a20, a21, a22, a23));
        if (rows > 3) Store(y + 3 * ys, count, Sum4(a30, a31, a32, a33));
        if (rows > 4) Store(y + 4 * ys, count, Sum4(a40, a41, a42, a43));
        if (rows > 5) Store(y + 5 * ys, count, Sum4(a50, a51, a52, a53));
    }

    /// <summary>One input row x 4 weight rows on AVX2: each element's sixteen lanes as two 8-lane accumulators (lo: lanes
    /// 0-7, hi: lanes 8-15), the AVX-512 path's operations one for one.</summary>
    static void Tile256(float* x, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y)
    {
        var l0 = Vector256<float>.Zero; var l1 = l0; var l2 = l0; var l3 = l0;
        var h0 = l0; var h1 = l0; var h2 = l0; var h3 = l0;
        int i = 0;
        for (; i <= k - 16; i += 16)
        {
            var xl = Avx.LoadVector256(x + i);
            var xh = Avx.LoadVector256(x + i + 8);
            l0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), xl, l0); h0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i + 8), xh, h0);
            l1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), xl, l1); h1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i + 8), xh, h1);
            l2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), xl, l2); h2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i + 8), xh, h2);
            l3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), xl, l3); h3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i + 8), xh, h3);
        }
        if (i < k)
        {
            int rest = k - i;
            LoadTail(x + i, rest, out var xl, out var xh);
            LoadTail(w0 + i, rest, out var wl, out var wh); l0 = Fma.MultiplyAdd(wl, xl, l0); h0 = Fma.MultiplyAdd(wh, xh, h0);
            LoadTail(w1 + i, rest, out wl, out wh); l1 = Fma.MultiplyAdd(wl, xl, l1); h1 = Fma.MultiplyAdd(wh, xh, h1);
            LoadTail(w2 + i, rest, out wl, out wh); l2 = Fma.MultiplyAdd(wl, xl, l2); h2 = Fma.MultiplyAdd(wh, xh, h2);
            LoadTail(w3 + i, rest, out wl, out wh); l3 = Fma.MultiplyAdd(wl, xl, l3); h3 = Fma.MultiplyAdd(wh, xh, h3);
        }
        Store(y, count, Sum4(Avx.Add(l0, h0), Avx.Add(l1, h1), Avx.Add(l2, h2), Avx.Add(l3, h3)));
    }

    /// <summary>The vector paths' arithmetic lane by lane, for CPUs without AVX2: the same bits.</summary>
    static void ScalarTile(float* x, float* w0, float* w1, float* w2, float* w3, int count, int k, float* y)
    {
        var lanes = stackalloc float[16];
        var h8 = stackalloc float[8];
        for (int c = 0; c < count; c++)
        {
            float* w = c == 0 ? w0 : c == 1 ? w1 : c == 2 ? w2 : w3;
            for (int l = 0; l < 16; l++) lanes[l] = 0;
            int full = k - k % 16;
            for (int i = 0; i < full; i++) lanes[i & 15] = MathF.FusedMultiplyAdd(w[i], x[i], lanes[i & 15]);
            if (full < k)   // the masked step: every lane takes part, those past K with 0 * 0
                for (int l = 0; l < 16; l++)
                    lanes[l] = full + l < k ? MathF.FusedMultiplyAdd(w[full + l], x[full + l], lanes[l]) : MathF.FusedMultiplyAdd(0f, 0f, lanes[l]);
            for (int l = 0; l < 8; l++) h8[l] = lanes[l] + lanes[l + 8];
            float h40 = h8[0] + h8[4], h41 = h8[1] + h8[5], h42 = h8[2] + h8[6], h43 = h8[3] + h8[7];
            y[c] = (h40 + h41) + (h42 + h43);
        }
    }
}
