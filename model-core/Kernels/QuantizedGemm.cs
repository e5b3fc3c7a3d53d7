using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Batch-invariant GEMM over 8-bit weights, y[m, n] = Σ_k x[m, k] · W[n, k] with W a <see cref="QuantizedMatrix"/>
/// (row-major codes, one scale per row and block of columns), for any number of input rows: decode (one row), a
/// decode batch and a prefill chunk give the same bits for the same input row, and no float copy of the matrix is made.
/// <para>Every output element is reduced in one fixed order whatever the call: the weights are the dequantized values
/// w = decode(code) · scale (one float32 multiply: exactly the values of <see cref="QuantizedMatrix.Dequantize"/>);
/// sixteen lane accumulators, lane j summing w[k] · x[k] for k ≡ j (mod 16) in increasing k with fused multiply-adds,
/// the last K mod 16 columns as one step with zero weights and inputs in the missing lanes, then the fixed horizontal
/// sum h8_i = lane_i + lane_(i+8), h4_i = h8_i + h8_(i+4), (h4_0 + h4_1) + (h4_2 + h4_3) (<see cref="Sum16"/>).</para>
/// <para>Two ways to compute that order. Up to <see cref="RegisterRows"/> input rows: four weight rows at a time, each
/// sixteen codes decoded in registers (int8: sign-extend and convert; FP8 E4M3: sign-extend, shift and mask into a
/// float32, times 2^120, see <see cref="Fp8E4M3"/>), multiplied by the block scale and used for every input row of the
/// tile; the codes are read once from memory. More rows: each panel of four weight rows is dequantized once into a
/// per-thread scratch (L1/L2-resident) and reused by every input row of the work item (up to
/// <see cref="BlockInputs"/>), tiles of four input rows by four weight rows in AVX-512 registers. Work items (blocks
/// of weight rows x blocks of input rows over all the jobs of a call) run on every core (<see cref="KernelParallel"/>).
/// Without AVX-512 (or, in the register path, when <see cref="QuantizedMatrix.RegisterDecodable"/> is false) the
/// same operations run lane by lane in scalar code or over the scratch: the same bits.</para>
/// </summary>
public static unsafe class QuantizedGemm
{
    /// <summary>Lanes of the fixed reduction order.</summary>
    public const int Lanes = 16;
    /// <summary>Input rows up to which the weights are decoded in registers (one tile); more use the dequantized panel.</summary>
    public const int RegisterRows = 4;
    const int TileWeights = 4, TileInputs = 4;
    const int BlockInputs = 48;        // input rows per work item (a multiple of TileInputs)
    const int SmallBlockWeights = 32;  // weight rows per work item for a decode-sized batch (a multiple of TileWeights)
    const int BlockWeights = 64;       // weight rows per work item otherwise

    /// <summary>Whether this CPU runs the AVX-512 paths (otherwise scalar code computes the same bits).</summary>
    public static bool Vectorized { get; } = Avx512F.IsSupported;

    /// <summary>Run the scalar code even where AVX-512 is there (tests and measurements: the same bits, slowly).</summary>
    public static bool ForceScalar { get; set; }

    [ThreadStatic] static float[]? t_panel;

    /// <summary>Runs <paramref name="jobs"/> on every core: 8-bit ones here, float32 ones through <see cref="InvariantGemm.Rows(in MatmulJob, int, int, int, int)"/>.</summary>
    public static void Run(MatmulJob[] jobs, int count)
    {
        if (count == 0) return;
        KernelParallel.ForJobItems(count, j => WeightBlocks(jobs[j]) * InputBlocks(jobs[j]), (j, local) =>
        {
            var job = jobs[j];
            int inputBlocks = InputBlocks(job), block = BlockWeightsFor(job);
            int n0 = local / inputBlocks * block, m0 = local % inputBlocks * BlockInputs;
            int n1 = Math.Min(job.N, n0 + block), m1 = Math.Min(job.M, m0 + BlockInputs);
            if (job.Quantized is null) InvariantGemm.Rows(job, m0, m1, n0, n1);
            else Rows(job, m0, m1, n0, n1);
        });
    }

    /// <summary>Runs one job on every core.</summary>
    public static void Run(in MatmulJob job) => Run([job], 1);

    static int BlockWeightsFor(in MatmulJob job) => job.M <= SmallBatchMatmul.MaxRows ? SmallBlockWeights : BlockWeights;
    static int WeightBlocks(in MatmulJob job) { int b = BlockWeightsFor(job); return (job.N + b - 1) / b; }
    static int InputBlocks(in MatmulJob job) => (job.M + BlockInputs - 1) / BlockInputs;

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of the 8-bit <paramref name="job"/> on this thread.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1)
    {
        var q = job.Quantized ?? throw new ArgumentException("an 8-bit job");
        bool vector = Vectorized && !ForceScalar;
        if (vector && m1 - m0 <= RegisterRows && q.RegisterDecodable)
        {
            for (int m = m0; m < m1;)
            {
                int inputs = Math.Min(TileInputs, m1 - m);
                for (int n = n0; n < n1; n += TileWeights)
                {
                    int count = Math.Min(TileWeights, n1 - n);
                    if (q.Format == WeightQuantization.Int8)
                        switch (inputs)
                        {
                            case 1: RegisterTile<Int8Codes, R1>(job, m, n, count); break;
                            case 2: RegisterTile<Int8Codes, R2>(job, m, n, count); break;
                            case 3: RegisterTile<Int8Codes, R3>(job, m, n, count); break;
                            default: RegisterTile<Int8Codes, R4>(job, m, n, count); break;
                        }
                    else
                        switch (inputs)
                        {
                            case 1: RegisterTile<Fp8Codes, R1>(job, m, n, count); break;
                            case 2: RegisterTile<Fp8Codes, R2>(job, m, n, count); break;
                            case 3: RegisterTile<Fp8Codes, R3>(job, m, n, count); break;
                            default: RegisterTile<Fp8Codes, R4>(job, m, n, count); break;
                        }
                }
                m += inputs;
            }
            return;
        }
        int k = job.K, kp = (k + Lanes - 1) / Lanes * Lanes;
        var scratch = t_panel is { } s && s.Length >= TileWeights * kp ? s : t_panel = GC.AllocateUninitializedArray<float>(Math.Max(TileWeights * kp, 4096), pinned: true);
        fixed (float* panel = scratch)
        {
            for (int n = n0; n < n1; n += TileWeights)
            {
                int count = Math.Min(TileWeights, n1 - n);
                for (int i = 0; i < TileWeights; i++)
                {
                    float* row = panel + (long)i * kp;
                    SmallBatchMatmul.DecodeRow(q, Math.Min(n + i, n1 - 1), row);
                    for (int c = k; c < kp; c++) row[c] = 0;
                }
                for (int m = m0; m < m1;)
                {
                    int inputs = Math.Min(TileInputs, m1 - m);
                    float* x = job.X + (long)m * k, y = job.Y + (long)m * job.YStride + n;
                    if (!vector) ScalarPanelTile(panel, kp, x, k, inputs, k, y, job.YStride, count);
                    else
                        switch (inputs)
                        {
                            case 1: PanelTile<R1>(panel, kp, x, k, y, job.YStride, count); break;
                            case 2: PanelTile<R2>(panel, kp, x, k, y, job.YStride, count); break;
                            case 3: PanelTile<R3>(panel, kp, x, k, y, job.YStride, count); break;
                            default: PanelTile<R4>(panel, kp, x, k, y, job.YStride, count); break;
                        }
                    m += inputs;
                }
            }
        }
    }

    interface IRows { static abstract int Count { get; } }
    readonly struct R1 : IRows { public static int Count => 1; }
    readonly struct R2 : IRows { public static int Count => 2; }
    readonly struct R3 : IRows { public static int Count => 3; }
    readonly struct R4 : IRows { public static int Count => 4; }

    interface ICodes
    {
        /// <summary>16 codes -> their values (before the block scale) divided by <see cref="Factor"/>.</summary>
        static abstract Vector512<float> Decode16(byte* codes);
        /// <summary>What the block scale is multiplied by before it multiplies <see cref="Decode16"/>'s values (a power of two: exact).</summary>
        static abstract float Factor { get; }
    }

    readonly struct Int8Codes : ICodes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Decode16(byte* codes) =>
            Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)codes)));
        public static float Factor => 1f;
    }

    /// <summary>FP8 E4M3: the bit decode (value · 2^-120, exact) times the scale · 2^120 (exact for |scale| &lt; 2^7, see
    /// <see cref="QuantizedMatrix.RegisterDecodable"/>): the same float32 product as decode(code) · scale, one multiply less.</summary>
    readonly struct Fp8Codes : ICodes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Decode16(byte* codes) => Fp8E4M3.DecodeScaled16(codes);
        public static float Factor => 1.329228e36f;   // 2^120
    }

    /// <summary>The fixed horizontal sum of sixteen lanes (see the class remarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Sum16(Vector512<float> v)
    {
        var h8 = v.GetLower() + v.GetUpper();
        var h4 = h8.GetLower() + h8.GetUpper();
        return (h4.GetElement(0) + h4.GetElement(1)) + (h4.GetElement(2) + h4.GetElement(3));
    }

    /// <summary>The same sum over sixteen scalar lanes.</summary>
    static float Sum16(float* lanes)
    {
        float h0 = (lanes[0] + lanes[8]) + (lanes[4] + lanes[12]);
        float h1 = (lanes[1] + lanes[9]) + (lanes[5] + lanes[13]);
        float h2 = (lanes[2] + lanes[10]) + (lanes[6] + lanes[14]);
        float h3 = (lanes[3] + lanes[11]) + (lanes[7] + lanes[15]);
        return (h0 + h1) + (h2 + h3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* y, int count, float s0, float s1, float s2, float s3)
    {
        y[0] = s0;
        if (count > 1) y[1] = s1;
        if (count > 2) y[2] = s2;
        if (count > 3) y[3] = s3;
    }

    /// <summary>
    /// Input rows [m, m + R) x weight rows [n, n + count) with the codes decoded in registers: four weight rows (a partial
    /// tile repeats its last row and drops the duplicates), each chunk of sixteen codes decoded once, scaled by its
    /// block's scale and used for the R input rows. The block width is a multiple of 16, so a chunk lies in one block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void RegisterTile<TCodes, TR>(in MatmulJob job, int m, int n, int count) where TCodes : struct, ICodes where TR : struct, IRows
    {
        var q = job.Quantized!;
        int k = job.K, blocks = q.BlocksPerRow, chunksPerBlock = q.BlockCols / Lanes, full = k / Lanes * Lanes;
        long r0 = n, r1 = n + Math.Min(1, count - 1), r2 = n + Math.Min(2, count - 1), r3 = n + Math.Min(3, count - 1);
        byte* c0 = q.Codes + r0 * k, c1 = q.Codes + r1 * k, c2 = q.Codes + r2 * k, c3 = q.Codes + r3 * k;
        float* sc0 = q.Scales + r0 * blocks, sc1 = q.Scales + r1 * blocks, sc2 = q.Scales + r2 * blocks, sc3 = q.Scales + r3 * blocks;
        float* x0 = job.X + (long)m * k;
        float* x1 = TR.Count > 1 ? x0 + k : x0, x2 = TR.Count > 2 ? x0 + 2L * k : x0, x3 = TR.Count > 3 ? x0 + 3L * k : x0;
        // The last K mod 16 columns: codes and inputs copied into zeroed chunks (nothing read past the rows).
        byte* codeTail = stackalloc byte[4 * Lanes];
        float* xTail = stackalloc float[4 * Lanes];
        new Span<byte>(codeTail, 4 * Lanes).Clear();
        new Span<float>(xTail, 4 * Lanes).Clear();
        int rest = k - full;
        if (rest > 0)
        {
            for (int i = 0; i < rest; i++)
            {
                codeTail[i] = c0[full + i]; codeTail[Lanes + i] = c1[full + i]; codeTail[2 * Lanes + i] = c2[full + i]; codeTail[3 * Lanes + i] = c3[full + i];
                xTail[i] = x0[full + i]; xTail[Lanes + i] = x1[full + i]; xTail[2 * Lanes + i] = x2[full + i]; xTail[3 * Lanes + i] = x3[full + i];
            }
        }
        var a00 = Vector512<float>.Zero; var a01 = a00; var a02 = a00; var a03 = a00;
        var a10 = a00; var a11 = a00; var a12 = a00; var a13 = a00;
        var a20 = a00; var a21 = a00; var a22 = a00; var a23 = a00;
        var a30 = a00; var a31 = a00; var a32 = a00; var a33 = a00;
        for (int b = 0, i = 0; b < blocks; b++)
        {
            var s0 = Vector512.Create(sc0[b] * TCodes.Factor); var s1 = Vector512.Create(sc1[b] * TCodes.Factor);
            var s2 = Vector512.Create(sc2[b] * TCodes.Factor); var s3 = Vector512.Create(sc3[b] * TCodes.Factor);
            for (int end = Math.Min(k, i + q.BlockCols); i < end; i += Lanes)
            {
                if (i == full)
                {
                    // Point the rows at the zero-padded copies for the last chunk.
                    c0 = codeTail - i; c1 = codeTail + Lanes - i; c2 = codeTail + 2 * Lanes - i; c3 = codeTail + 3 * Lanes - i;
                    x0 = xTail - i; x1 = xTail + Lanes - i; x2 = xTail + 2 * Lanes - i; x3 = xTail + 3 * Lanes - i;
                }
                var w0 = TCodes.Decode16(c0 + i) * s0;
                var w1 = TCodes.Decode16(c1 + i) * s1;
                var w2 = TCodes.Decode16(c2 + i) * s2;
                var w3 = TCodes.Decode16(c3 + i) * s3;
                var xv = Vector512.Load(x0 + i);
                a00 = Avx512F.FusedMultiplyAdd(w0, xv, a00); a01 = Avx512F.FusedMultiplyAdd(w1, xv, a01);
                a02 = Avx512F.FusedMultiplyAdd(w2, xv, a02); a03 = Avx512F.FusedMultiplyAdd(w3, xv, a03);
                if (TR.Count > 1)
                {
                    xv = Vector512.Load(x1 + i);
                    a10 = Avx512F.FusedMultiplyAdd(w0, xv, a10); a11 = Avx512F.FusedMultiplyAdd(w1, xv, a11);
                    a12 = Avx512F.FusedMultiplyAdd(w2, xv, a12); a13 = Avx512F.FusedMultiplyAdd(w3, xv, a13);
                }
                if (TR.Count > 2)
                {
                    xv = Vector512.Load(x2 + i);
                    a20 = Avx512F.FusedMultiplyAdd(w0, xv, a20); a21 = Avx512F.FusedMultiplyAdd(w1, xv, a21);
                    a22 = Avx512F.FusedMultiplyAdd(w2, xv, a22); a23 = Avx512F.FusedMultiplyAdd(w3, xv, a23);
                }
                if (TR.Count > 3)
                {
                    xv = Vector512.Load(x3 + i);
                    a30 = Avx512F.FusedMultiplyAdd(w0, xv, a30); a31 = Avx512F.FusedMultiplyAdd(w1, xv, a31);
                    a32 = Avx512F.FusedMultiplyAdd(w2, xv, a32); a33 = Avx512F.FusedMultiplyAdd(w3, xv, a33);
                }
            }
        }
        long ys = job.YStride;
        float* y = job.Y + (long)m * ys + n;
        Store(y, count, Sum16(a00), Sum16(a01), Sum16(a02), Sum16(a03));
        if (TR.Count > 1) Store(y + ys, count, Sum16(a10), Sum16(a11), Sum16(a12), Sum16(a13));
        if (TR.Count > 2) Store(y + 2 * ys, count, Sum16(a20), Sum16(a21), Sum16(a22), Sum16(a23));
        if (TR.Count > 3) Store(y + 3 * ys, count, Sum16(a30), Sum16(a31), Sum16(a32), Sum16(a33));
    }

    /// <summary>
    /// Input rows x[0..R) (rows <paramref name="xs"/> floats apart, <paramref name="k"/> long) against a dequantized panel
    /// of four weight rows (<paramref name="kp"/> floats apart, zero past k), results into y[r * ys + 0..count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PanelTile<TR>(float* w, int kp, float* x, long xs, float* y, long ys, int count) where TR : struct, IRows
    {
        int k = (int)xs, full = k / Lanes * Lanes;
        float* w0 = w, w1 = w + kp, w2 = w + 2L * kp, w3 = w + 3L * kp;
        float* x0 = x, x1 = TR.Count > 1 ? x + xs : x, x2 = TR.Count > 2 ? x + 2 * xs : x, x3 = TR.Count > 3 ? x + 3 * xs : x;
        float* xTail = stackalloc float[4 * Lanes];
        new Span<float>(xTail, 4 * Lanes).Clear();
        for (int i = 0; i < k - full; i++)
        {
            xTail[i] = x0[full + i]; xTail[Lanes + i] = x1[full + i]; xTail[2 * Lanes + i] = x2[full + i]; xTail[3 * Lanes + i] = x3[full + i];
        }
        var a00 = Vector512<float>.Zero; var a01 = a00; var a02 = a00; var a03 = a00;
        var a10 = a00; var a11 = a00; var a12 = a00; var a13 = a00;
        var a20 = a00; var a21 = a00; var a22 = a00; var a23 = a00;
        var a30 = a00; var a31 = a00; var a32 = a00; var a33 = a00;
        for (int i = 0; i < kp; i += Lanes)
        {
            if (i == full)
            {
                x0 = xTail - i; x1 = xTail + Lanes - i; x2 = xTail + 2 * Lanes - i; x3 = xTail + 3 * Lanes - i;
            }
            var v0 = Vector512.Load(w0 + i); var v1 = Vector512.Load(w1 + i); var v2 = Vector512.Load(w2 + i); var v3 = Vector512.Load(w3 + i);
            var xv = Vector512.Load(x0 + i);
            a00 = Avx512F.FusedMultiplyAdd(v0, xv, a00); a01 = Avx512F.FusedMultiplyAdd(v1, xv, a01);
            a02 = Avx512F.FusedMultiplyAdd(v2, xv, a02); a03 = Avx512F.FusedMultiplyAdd(v3, xv, a03);
            if (TR.Count > 1)
            {
                xv = Vector512.Load(x1 + i);
                a10 = Avx512F.FusedMultiplyAdd(v0, xv, a10); a11 = Avx512F.FusedMultiplyAdd(v1, xv, a11);
                a12 = Avx512F.FusedMultiplyAdd(v2, xv, a12); a13 = Avx512F.FusedMultiplyAdd(v3, xv, a13);
            }
            if (TR.Count > 2)
            {
                xv = Vector512.Load(x2 + i);
                a20 = Avx512F.FusedMultiplyAdd(v0, xv, a20); a21 = Avx512F.FusedMultiplyAdd(v1, xv, a21);
                a22 = Avx512F.FusedMultiplyAdd(v2, xv, a22); a23 = Avx512F.FusedMultiplyAdd(v3, xv, a23);
            }
            if (TR.Count > 3)
            {
                xv = Vector512.Load(x3 + i);
                a30 = Avx512F.FusedMultiplyAdd(v0, xv, a30); a31 = Avx512F.FusedMultiplyAdd(v1, xv, a31);
                a32 = Avx512F.FusedMultiplyAdd(v2, xv, a32); a33 = Avx512F.FusedMultiplyAdd(v3, xv, a33);
            }
        }
        Store(y, count, Sum16(a00), Sum16(a01), Sum16(a02), Sum16(a03));
        if (TR.Count > 1) Store(y + ys, count, Sum16(a10), Sum16(a11), Sum16(a12), Sum16(a13));
        if (TR.Count > 2) Store(y + 2 * ys, count, Sum16(a20), Sum16(a21), Sum16(a22), Sum16(a23));
        if (TR.Count > 3) Store(y + 3 * ys, count, Sum16(a30), Sum16(a31), Sum16(a32), Sum16(a33));
    }

    /// <summary><see cref="PanelTile{TR}"/> lane by lane: the same operations in the same order, for CPUs without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ScalarPanelTile(float* w, int kp, float* x, long xs, int inputs, int k, float* y, long ys, int count)
    {
        float* lanes = stackalloc float[Lanes];
        for (int r = 0; r < inputs; r++)
            for (int j = 0; j < count; j++)
            {
                float* wr = w + (long)j * kp, xr = x + r * xs;
                for (int l = 0; l < Lanes; l++) lanes[l] = 0;
                for (int i = 0; i < kp; i += Lanes)
                    for (int l = 0; l < Lanes; l++)
                    {
                        float xv = i + l < k ? xr[i + l] : 0f;
                        lanes[l] = MathF.FusedMultiplyAdd(wr[i + l], xv, lanes[l]);
                    }
                y[r * ys + j] = Sum16(lanes);
            }
    }
}
