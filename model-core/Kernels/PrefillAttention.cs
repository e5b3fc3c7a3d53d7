using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Causal multi-head attention of a prefill chunk over per-head keys and values already expanded from the latent cache
/// (naive MLA, DeepSeek-V2 §2.1): n queries at positions [start, start+n) against keys 0..T-1 (T = start + n); for
/// every query row at position p and head h,
/// s_j = scale · ([q_nope | q_R] · [k_nope,j | k_R,j]) for j ≤ p; e_j = exp(s_j − max s); out = Σ_j e_j v_j / Σ_j e_j.
/// Only the keys a row sees are used (no mask, the masked half of the scores is skipped panel by panel).
/// <para>
/// Per call the keys are packed per head as Kᵀ panels ([nope+rope][32 keys]) and the values as [T][32] panels, so both
/// matmuls run <see cref="InvariantGemm"/>'s outer-product micro-kernel (one fused multiply-add chain per output in
/// increasing order). Work items are (head, block of <see cref="BlockRows"/> query rows), spread over the cores.
/// </para>
/// <para>
/// Each row's output depends only on its query and the keys 0..p, in a fixed order: the scores are independent dot
/// products, the max is exact, exp is one fixed float32 polynomial (<see cref="Exp"/>), the sum of the e_j runs over
/// 16 lanes (lane l holds j ≡ l mod 16) added in lane order, and the value chain runs j = 0, 1, .. with zeros for the
/// keys past p that a neighbouring row of the tile sees (fma(0, v, acc) = acc). So prefilling a prompt in one chunk
/// or several gives the same bits, and the AVX-512, AVX2 and scalar paths give the same bits. Plain memory only.
/// </para>
/// </summary>
public static unsafe class PrefillAttention
{
    const int Panel = PackedWeight.PanelWidth;
    const int TileRows = InvariantGemm.TileRows;
    /// <summary>Query rows per work item (four micro-kernel tiles).</summary>
    public const int BlockRows = 4 * TileRows;
    const int KeyBlock = InvariantGemm.BlockK;   // keys per value-panel slice (32 KiB, in L1 while a tile runs)
    const int Lanes = 16;

    [ThreadStatic] static float[]? t_packed;     // the calling thread's Kᵀ and V panels
    [ThreadStatic] static float[]? t_expanded;   // the calling thread's expanded keys and values

    /// <summary>A buffer of at least <paramref name="floats"/> floats for the expanded keys and values [T, H*(nope+v)],
    /// reused by the calling thread's calls (no fresh pages per chunk): valid until this thread asks again.</summary>
    public static float* ExpansionBuffer(long floats)
    {
        var buffer = t_expanded is { } b && b.LongLength >= floats ? b : t_expanded = GC.AllocateUninitializedArray<float>((int)Math.Max(floats, 1 << 16), pinned: true);
        return (float*)Unsafe.AsPointer(ref buffer[0]);
    }
    [ThreadStatic] static float[]? t_scratch;    // a worker's query block, scores and output tile

    /// <summary>Useful floating-point operations of one call: 2 · H · (nope + rope + v) per (query, visible key) pair.</summary>
    public static double Flops(int n, int start, int heads, int nope, int rope, int v) =>
        2.0 * heads * (nope + rope + v) * (n * (double)start + n * (n + 1.0) / 2);

    /// <param name="qNope">[n, H, nope] contiguous</param>
    /// <param name="qRope">[n, H, rope] contiguous, rotated</param>
    /// <param name="kv">[T, H*(nope+v)]: each head's k_nope then v (kv_b_proj applied to c_KV)</param>
    /// <param name="kRope">k_R of position 0 (rope floats), position t at kRope + t * kRopeStride</param>
    /// <param name="output">[n, H*v]</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* qNope, float* qRope, float* kv, float* kRope, long kRopeStride, int n, int start,
        int heads, int nope, int rope, int v, float scale, float* output, GemmPath path)
    {
        if (n < 1 || start < 0 || heads < 1 || nope < 0 || rope < 0 || nope + rope < 1 || v < 1)
            throw new ArgumentException("prefill attention needs at least one query, head and value column");
        int t = start + n, dqk = nope + rope, kvWidth = nope + v;
        int keyPanels = (t + Panel - 1) / Panel, valuePanels = (v + Panel - 1) / Panel, tPad = keyPanels * Panel, vPad = valuePanels * Panel;
        long keyFloats = (long)keyPanels * dqk * Panel, valueFloats = (long)valuePanels * t * Panel;   // per head
        long packedNeed = heads * (keyFloats + valueFloats);
        var packed = t_packed is { } p0 && p0.LongLength >= packedNeed ? p0 : t_packed = GC.AllocateUninitializedArray<float>((int)Math.Max(packedNeed, 1 << 16), pinned: true);
        int queryBlocks = (n + BlockRows - 1) / BlockRows;
        fixed (float* packedBase = packed)
        {
            float* keysT = packedBase, values = packedBase + heads * keyFloats;
            // Kᵀ panels per head: [keyPanel][d][32 keys] (zero past T); V panels per head: [valuePanel][T][32] (zero past v).
            KernelParallel.For(heads, h =>
            {
                float* kt = keysT + h * keyFloats;
                for (int kp = 0; kp < keyPanels; kp++)
                    for (int j = 0; j < Panel; j++)
                    {
                        int key = kp * Panel + j;
                        float* dst = kt + (long)kp * dqk * Panel + j;
                        if (key < t)
                        {
                            float* kn = kv + (long)key * heads * kvWidth + (long)h * kvWidth;
                            float* kr = kRope + key * kRopeStride;
                            for (int d = 0; d < nope; d++) dst[d * Panel] = kn[d];
                            for (int d = 0; d < rope; d++) dst[(nope + d) * Panel] = kr[d];
                        }
                        else
                            for (int d = 0; d < dqk; d++) dst[d * Panel] = 0f;
                    }
                float* vh = values + h * valueFloats;
                for (int key = 0; key < t; key++)
                {
                    float* src = kv + (long)key * heads * kvWidth + (long)h * kvWidth + nope;
                    for (int vp = 0; vp < valuePanels; vp++)
                    {
                        float* dst = vh + ((long)vp * t + key) * Panel;
                        for (int c = 0; c < Panel; c++) dst[c] = vp * Panel + c < v ? src[vp * Panel + c] : 0f;
                    }
                }
            });
            // Work items: the heaviest query blocks (the last ones, which see the most keys) first.
            KernelParallel.For(heads * queryBlocks, item =>
            {
                int block = queryBlocks - 1 - item / heads, h = item % heads;
                long need = (long)BlockRows * dqk + (long)BlockRows * tPad + TileRows * vPad + BlockRows;
                var scratch = t_scratch is { } s && s.LongLength >= need ? s : t_scratch = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 1 << 14), pinned: true);
                fixed (float* scratchBase = scratch)
                    Block(qNope, qRope, keysT + h * keyFloats, values + h * valueFloats, output, scratchBase, h, block * BlockRows,
                        Math.Min(n, (block + 1) * BlockRows), start, t, heads, nope, rope, v, dqk, tPad, vPad, valuePanels, scale, path);
            });
        }
    }

    /// <summary>Query rows [m0, m1) of head h: gather the queries, then per tile of six rows the scores over the key
    /// panels the tile sees, each row's softmax, the value panels, and the division by the row's sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Block(float* qNope, float* qRope, float* keysT, float* values, float* output, float* scratch, int h, int m0, int m1,
        int start, int t, int heads, int nope, int rope, int v, int dqk, int tPad, int vPad, int valuePanels, float scale, GemmPath path)
    {
        float* q = scratch, scores = q + BlockRows * dqk, tile = scores + (long)BlockRows * tPad, sums = tile + TileRows * vPad;
        for (int m = m0; m < m1; m++)
        {
            float* dst = q + (m - m0) * dqk;
            float* qn = qNope + ((long)m * heads + h) * nope;
            float* qr = qRope + ((long)m * heads + h) * rope;
            for (int d = 0; d < nope; d++) dst[d] = qn[d];
            for (int d = 0; d < rope; d++) dst[nope + d] = qr[d];
        }
        for (int mt = m0; mt < m1; mt += TileRows)
        {
            int rows = Math.Min(TileRows, m1 - mt), local = mt - m0;
            int keys = start + mt + rows;                       // the tile's last row sees keys 0..keys-1
            float* s = scores + (long)local * tPad;
            for (int kp = 0; kp * Panel < keys; kp++)
                InvariantGemm.Tile(path, rows, q + local * dqk, dqk, keysT + (long)kp * dqk * Panel, dqk, s + kp * Panel, tPad, false);
            for (int r = 0; r < rows; r++)
                sums[r] = Softmax(s + (long)r * tPad, start + mt + r + 1, keys, scale, path);
            for (int vp = 0; vp < valuePanels; vp++)
                for (int k0 = 0; k0 < keys; k0 += KeyBlock)
                    InvariantGemm.Tile(path, rows, s + k0, tPad, values + ((long)vp * t + k0) * Panel, Math.Min(KeyBlock, keys - k0),
                        tile + vp * Panel, vPad, k0 > 0);
            for (int r = 0; r < rows; r++)
            {
                float* o = output + (long)(mt + r) * heads * v + (long)h * v;
                float sum = sums[r];
                for (int c = 0; c < v; c++) o[c] = tile[r * vPad + c] / sum;
            }
        }
    }

    /// <summary>Row of raw scores s[0..count) -> e_j = exp(scale·s_j − max), zeros over [count, end); returns Σ e_j
    /// summed in 16 lanes (j mod 16), the lanes then added in order. The same bits on every path.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Softmax(float* s, int count, int end, float scale, GemmPath path)
    {
        int full = count & ~(Lanes - 1), j = 0;
        float max = float.NegativeInfinity;
        var lanes = stackalloc float[Lanes];
        switch (path)
        {
            case GemmPath.Avx512:
            {
                var vmax = Vector512.Create(float.NegativeInfinity);
                var vscale = Vector512.Create(scale);
                for (; j < full; j += Lanes)
                {
                    var x = Vector512.Load(s + j) * vscale;
                    x.Store(s + j);
                    vmax = Avx512F.Max(vmax, x);
                }
                for (int l = 0; l < Lanes; l++) max = MathF.Max(max, vmax.GetElement(l));
                break;
            }
            case GemmPath.Avx2:
            {
                var vmax = Vector256.Create(float.NegativeInfinity);
                var vscale = Vector256.Create(scale);
                for (; j < full; j += 8)
                {
                    var x = Vector256.Load(s + j) * vscale;
                    x.Store(s + j);
                    vmax = Avx.Max(vmax, x);
                }
                for (int l = 0; l < 8; l++) max = MathF.Max(max, vmax.GetElement(l));
                break;
            }
        }
        for (; j < count; j++)
        {
            float x = s[j] * scale;
            s[j] = x;
            max = MathF.Max(max, x);
        }
        j = 0;
        switch (path)
        {
            case GemmPath.Avx512:
            {
                var acc = Vector512<float>.Zero;
                var vmax = Vector512.Create(max);
                for (; j < full; j += Lanes)
                {
                    var e = Exp(Vector512.Load(s + j) - vmax);
                    e.Store(s + j);
                    acc += e;
                }
                acc.Store(lanes);
                break;
            }
            case GemmPath.Avx2:
            {
                Vector256<float> lo = Vector256<float>.Zero, hi = Vector256<float>.Zero;
                var vmax = Vector256.Create(max);
                for (; j < full; j += Lanes)
                {
                    var e0 = Exp(Vector256.Load(s + j) - vmax);
                    var e1 = Exp(Vector256.Load(s + j + 8) - vmax);
                    e0.Store(s + j);
                    e1.Store(s + j + 8);
                    lo += e0;
                    hi += e1;
                }
                lo.Store(lanes);
                hi.Store(lanes + 8);
                break;
            }
            default:
                for (int l = 0; l < Lanes; l++) lanes[l] = 0f;
                break;
        }
        for (; j < count; j++)
        {
            float e = Exp(s[j] - max);
            s[j] = e;
            lanes[j & (Lanes - 1)] += e;
        }
        for (; j < end; j++) s[j] = 0f;
        float sum = lanes[0];
        for (int l = 1; l < Lanes; l++) sum += lanes[l];
        return sum;
    }

    // exp(x) for x ≤ 0 (Cephes expf): x = n·ln2 + r with n = round(x·log2 e), e^r by a degree-7 polynomial, times 2^n.
    // Relative error about 1 ulp; below −87 it returns e^−87 (the arguments here are scores minus their row's max).
    // The scalar and vector forms run the same float32 operations, so they give the same bits.
    const float ExpLow = -87f, Log2E = 1.44269504088896341f, RoundMagic = 12582912f;   // 1.5 · 2^23: adding it rounds to an integer
    const float Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f, P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    /// <summary>The scalar exp (also the vector paths' tails).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x)
    {
        x = MathF.Max(x, ExpLow);
        float fx = x * Log2E;
        fx += RoundMagic;
        fx -= RoundMagic;
        int n = (int)fx;
        float r = MathF.FusedMultiplyAdd(fx, -Ln2Hi, x);
        r = MathF.FusedMultiplyAdd(fx, -Ln2Lo, r);
        float y = MathF.FusedMultiplyAdd(P0, r, P1);
        y = MathF.FusedMultiplyAdd(y, r, P2);
        y = MathF.FusedMultiplyAdd(y, r, P3);
        y = MathF.FusedMultiplyAdd(y, r, P4);
        y = MathF.FusedMultiplyAdd(y, r, P5);
        y = MathF.FusedMultiplyAdd(y, r * r, r);
        y += 1f;
        return y * BitConverter.Int32BitsToSingle((n + 127) << 23);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Exp(Vector512<float> x)
    {
        x = Avx512F.Max(x, Vector512.Create(ExpLow));
        var fx = x * Vector512.Create(Log2E);
        fx += Vector512.Create(RoundMagic);
        fx -= Vector512.Create(RoundMagic);
        var n = Avx512F.ConvertToVector512Int32WithTruncation(fx);
        var r = Avx512F.FusedMultiplyAdd(fx, Vector512.Create(-Ln2Hi), x);
        r = Avx512F.FusedMultiplyAdd(fx, Vector512.Create(-Ln2Lo), r);
        var y = Avx512F.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        y = Avx512F.FusedMultiplyAdd(y, r, Vector512.Create(P2));
        y = Avx512F.FusedMultiplyAdd(y, r, Vector512.Create(P3));
        y = Avx512F.FusedMultiplyAdd(y, r, Vector512.Create(P4));
        y = Avx512F.FusedMultiplyAdd(y, r, Vector512.Create(P5));
        y = Avx512F.FusedMultiplyAdd(y, r * r, r);
        y += Vector512<float>.One;
        return y * Vector512.ShiftLeft(n + Vector512.Create(127), 23).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Exp(Vector256<float> x)
    {
        x = Avx.Max(x, Vector256.Create(ExpLow));
        var fx = x * Vector256.Create(Log2E);
        fx += Vector256.Create(RoundMagic);
        fx -= Vector256.Create(RoundMagic);
        var n = Avx.ConvertToVector256Int32WithTruncation(fx);
        var r = Fma.MultiplyAdd(fx, Vector256.Create(-Ln2Hi), x);
        r = Fma.MultiplyAdd(fx, Vector256.Create(-Ln2Lo), r);
        var y = Fma.MultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        y = Fma.MultiplyAdd(y, r, Vector256.Create(P2));
        y = Fma.MultiplyAdd(y, r, Vector256.Create(P3));
        y = Fma.MultiplyAdd(y, r, Vector256.Create(P4));
        y = Fma.MultiplyAdd(y, r, Vector256.Create(P5));
        y = Fma.MultiplyAdd(y, r * r, r);
        y += Vector256<float>.One;
        return y * Vector256.ShiftLeft(n + Vector256.Create(127), 23).AsSingle();
    }
}
