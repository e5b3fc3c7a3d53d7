using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Batch-invariant GEMM over 8-bit weights, y[m, n] = Σ_k x[m, k] · W[n, k] with W a <see cref="QuantizedMatrix"/>,
/// for any number of input rows: decode (one row), a decode batch and a prefill chunk give the same bits for the same
/// input row, and no float copy of the matrix is made. Each format has ONE arithmetic per output element, whatever the
/// tile, batch or instruction set:
/// <para><b>int8</b> (codes in 32-row panels, see <see cref="QuantizedMatrix"/>): each input row is first quantized per
/// block of the matrix's columns to int16 (xq = round-half-even(x · 32767 / absmax), xs = absmax / 32767, zero past K;
/// <see cref="QuantizeInput"/>), then for each block b in increasing order the exact int32 block sum
/// S_b = Σ_{k in b} code[n, k] · xq[m, k] (exact, so its order is free) is folded into one float32 accumulator:
/// acc = fma((float)S_b, scale[n, b] · xs[m, b], acc) from acc = +0. The AVX-512 kernel is an outer product like the
/// float32 GEMM's: per column pair, 32 codes of the panel widened to int16 (<c>vpmovsxbw</c>) and multiplied with the
/// input's (xq[2j], xq[2j+1]) broadcast, two products summed into each int32 lane (<c>vpmaddwd</c> + add; .NET 10
/// has no 512-bit <c>vpdpwssd</c>), for up to <see cref="TileInputs"/> input rows at a time; one lane is one output element,
/// so there is no horizontal sum. The scalar code computes the same S_b and the same fma chain.</para>
/// <para><b>FP8 E4M3</b> (row-major codes): the dequantized weights w = decode(code) · scale (one float32 multiply:
/// exactly <see cref="QuantizedMatrix.Dequantize"/>'s values); sixteen lane accumulators, lane j summing w[k] · x[k] for
/// k ≡ j (mod 16) in increasing k with fused multiply-adds, the last K mod 16 columns as one step with zero weights and
/// inputs in the missing lanes, then the fixed horizontal sum h8_i = lane_i + lane_(i+8), h4_i = h8_i + h8_(i+4),
/// (h4_0 + h4_1) + (h4_2 + h4_3) (<see cref="Sum16(Vector512{float})"/>). Up to <see cref="RegisterRows"/> input rows
/// the codes are decoded in registers (sign-extend, shift and mask into a float32, times 2^120, see <see cref="Fp8E4M3"/>);
/// more rows dequantize each panel of four weight rows once into a per-thread scratch reused by the work item's rows.
/// When <see cref="QuantizedMatrix.RegisterDecodable"/> is false the scratch path runs for every row count.</para>
/// Work items (blocks of weight rows x blocks of input rows over all the jobs of a call) run on every core
/// (<see cref="KernelParallel"/>). Without AVX-512 the same operations run in scalar code: the same bits.
/// </summary>
public static unsafe class QuantizedGemm
{
    /// <summary>Lanes of the FP8 reduction order.</summary>
    public const int Lanes = 16;
    /// <summary>FP8: input rows up to which the weights are decoded in registers (one tile); more use the dequantized panel.</summary>
    public const int RegisterRows = 4;
    /// <summary>Input rows of a decode-sized batch (work items then split the weight rows finer).</summary>
    public const int DecodeRows = 16;
    /// <summary>int8: the largest |xq| of the quantized inputs.</summary>
    const float InputCodeMax = 32767f;
    const int TileWeights = 4, TileInputs = 4;
    const int BlockInputs = 48;        // input rows per work item (a multiple of TileInputs)
    const int SmallBlockWeights = 32;  // weight rows per work item for a decode-sized batch (a multiple of the int8 panel)
    const int BlockWeights = 64;       // weight rows per work item otherwise

    /// <summary>Whether this CPU runs the AVX-512 paths (otherwise scalar code computes the same bits).</summary>
    public static bool Vectorized { get; } = Avx512F.IsSupported && Avx512BW.IsSupported;

    [ThreadStatic] static float[]? t_panel;
    [ThreadStatic] static QuantizedInputs? t_inputs;

    /// <summary>Runs <paramref name="jobs"/> on every core: 8-bit ones here, float32 ones through
    /// <see cref="InvariantGemm.Rows(in MatmulJob, int, int, int, int)"/>. <paramref name="scalar"/>: the scalar code
    /// even where AVX-512 is there (tests and measurements: the same bits, slowly).</summary>
    public static void Run(MatmulJob[] jobs, int count, bool scalar = false)
    {
        if (count == 0) return;
        bool vector = Vectorized && !scalar;
        var inputs = t_inputs ??= new QuantizedInputs();
        var quantized = inputs.Quantize(jobs, count, vector);
        KernelParallel.ForJobItems(count, j => WeightBlocks(jobs[j]) * InputBlocks(jobs[j]), (j, local) =>
        {
            var job = jobs[j];
            int inputBlocks = InputBlocks(job), block = BlockWeightsFor(job);
            int n0 = local / inputBlocks * block, m0 = local % inputBlocks * BlockInputs;
            int n1 = Math.Min(job.N, n0 + block), m1 = Math.Min(job.M, m0 + BlockInputs);
            if (job.Quantized is null) InvariantGemm.Rows(job, m0, m1, n0, n1);
            else if (job.Quantized.Format == WeightQuantization.Int8) Int8Rows(job, quantized[j], m0, m1, n0, n1, vector);
            else Fp8Rows(job, m0, m1, n0, n1, vector);
        });
    }

    /// <summary>Runs one job on every core.</summary>
    public static void Run(in MatmulJob job, bool scalar = false) => Run([job], 1, scalar);

    static int BlockWeightsFor(in MatmulJob job) => job.M <= DecodeRows ? SmallBlockWeights : BlockWeights;
    static int WeightBlocks(in MatmulJob job) { int b = BlockWeightsFor(job); return (job.N + b - 1) / b; }
    static int InputBlocks(in MatmulJob job) => (job.M + BlockInputs - 1) / BlockInputs;

    /// <summary>A job's input rows quantized for the int8 kernel: row m's int16 codes at Codes + m · Stride (zero past K),
    /// its block scales at Scales + m · Blocks.</summary>
    readonly struct QuantizedInput(short* codes, int stride, float* scales, int blocks)
    {
        public readonly short* Codes = codes;
        public readonly int Stride = stride;
        public readonly float* Scales = scales;
        public readonly int Blocks = blocks;
    }

    /// <summary>The calling thread's buffer for the quantized inputs of a call (native, grown as needed, reused).</summary>
    sealed class QuantizedInputs
    {
        byte* _buffer;
        long _bytes;
        QuantizedInput[] _inputs = new QuantizedInput[4];

        public QuantizedInput[] Quantize(MatmulJob[] jobs, int count, bool vector)
        {
            if (_inputs.Length < count) _inputs = new QuantizedInput[count];
            long need = 0;
            for (int j = 0; j < count; j++) need += Bytes(jobs[j]);
            if (need > _bytes)
            {
                if (_buffer is not null) NativeMemory.AlignedFree(_buffer);
                _bytes = Math.Max(need, 2 * _bytes);
                _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)_bytes, 64);
            }
            byte* at = _buffer;
            for (int j = 0; j < count; j++)
            {
                var job = jobs[j];
                if (job.Quantized is not { Format: WeightQuantization.Int8 } q) continue;
                int stride = 2 * q.ColumnPairs, blocks = q.BlocksPerRow;
                var input = new QuantizedInput((short*)at, stride, (float*)(at + Align((long)job.M * stride * sizeof(short))), blocks);
                for (int m = 0; m < job.M; m++)
                    QuantizeInput(job.X + (long)m * job.K, job.K, q.BlockCols, input.Codes + (long)m * stride, input.Scales + (long)m * blocks, vector);
                _inputs[j] = input;
                at += Bytes(job);
            }
            return _inputs;
        }

        static long Align(long bytes) => (bytes + 63) / 64 * 64;

        static long Bytes(in MatmulJob job) => job.Quantized is { Format: WeightQuantization.Int8 } q
            ? Align((long)job.M * 2 * q.ColumnPairs * sizeof(short)) + Align((long)job.M * q.BlocksPerRow * sizeof(float))
            : 0;

        ~QuantizedInputs()
        {
            if (_buffer is not null) NativeMemory.AlignedFree(_buffer);
        }
    }

    /// <summary>
    /// One input row x[0..k) quantized per <paramref name="blockCols"/>-column block to int16 codes (round half to even
    /// of x · (32767 / absmax), zero for an all-zero block; zero past k up to the even length) and float32 scales
    /// absmax / 32767. The vector and scalar code give the same values (the max is exact, the products are the same
    /// float32 products, <c>vcvtps2dq</c> rounds half to even).
    /// </summary>
    internal static void QuantizeInput(float* x, int k, int blockCols, short* codes, float* scales, bool vector)
    {
        for (int b = 0, c0 = 0; c0 < k; b++, c0 += blockCols)
        {
            int c1 = Math.Min(k, c0 + blockCols), c = c0;
            float amax = 0;
            if (vector)
            {
                var m = Vector512<float>.Zero;
                for (; c <= c1 - 16; c += 16) m = Avx512F.Max(m, Vector512.Abs(Vector512.Load(x + c)));
                var h8 = Vector256.Max(m.GetLower(), m.GetUpper());
                var h4 = Vector128.Max(h8.GetLower(), h8.GetUpper());
                amax = MathF.Max(MathF.Max(h4[0], h4[1]), MathF.Max(h4[2], h4[3]));
            }
            for (; c < c1; c++) amax = MathF.Max(amax, MathF.Abs(x[c]));
            float inv = amax > 0 ? InputCodeMax / amax : 0f;
            scales[b] = amax / InputCodeMax;
            c = c0;
            if (vector)
            {
                var vinv = Vector512.Create(inv);
                for (; c <= c1 - 16; c += 16)
                    Avx512BW.ConvertToVector256Int16(Avx512F.ConvertToVector512Int32(Vector512.Load(x + c) * vinv)).Store(codes + c);
            }
            for (; c < c1; c++) codes[c] = (short)(int)MathF.Round(x[c] * inv, MidpointRounding.ToEven);
        }
        if ((k & 1) != 0) codes[k] = 0;
    }

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of the int8 <paramref name="job"/> on this thread (n0 a multiple of the panel rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Int8Rows(in MatmulJob job, in QuantizedInput input, int m0, int m1, int n0, int n1, bool vector)
    {
        var q = job.Quantized!;
        const int panelRows = QuantizedMatrix.PanelRows;
        int pairs = q.ColumnPairs, blocks = q.BlocksPerRow, pairsPerBlock = q.BlockCols / 2;
        for (int n = n0; n < n1; n += panelRows)
        {
            int count = Math.Min(panelRows, n1 - n), p = n / panelRows;
            byte* codes = q.Codes + (long)p * pairs * 2 * panelRows;
            float* scales = q.Scales + (long)p * blocks * panelRows;
            for (int m = m0; m < m1;)
            {
                int rows = Math.Min(TileInputs, m1 - m);
                short* xq = input.Codes + (long)m * input.Stride;
                float* xs = input.Scales + (long)m * input.Blocks, y = job.Y + (long)m * job.YStride + n;
                if (!vector) ScalarInt8Tile(codes, scales, pairs, blocks, pairsPerBlock, xq, input.Stride, xs, input.Blocks, rows, y, job.YStride, count);
                else
                    switch (rows)
                    {
                        case 1: Int8Tile<R1>(codes, scales, pairs, blocks, pairsPerBlock, xq, input.Stride, xs, input.Blocks, y, job.YStride, count); break;
                        case 2: Int8Tile<R2>(codes, scales, pairs, blocks, pairsPerBlock, xq, input.Stride, xs, input.Blocks, y, job.YStride, count); break;
                        case 3: Int8Tile<R3>(codes, scales, pairs, blocks, pairsPerBlock, xq, input.Stride, xs, input.Blocks, y, job.YStride, count); break;
                        default: Int8Tile<R4>(codes, scales, pairs, blocks, pairsPerBlock, xq, input.Stride, xs, input.Blocks, y, job.YStride, count); break;
                    }
                m += rows;
            }
        }
    }

    /// <summary>Adds the two-product sums of int16 lanes a · b to the int32 lanes of <paramref name="acc"/> (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> AddPairProducts(Vector512<int> acc, Vector512<short> a, Vector512<short> b) =>
        acc + Avx512BW.MultiplyAddAdjacent(a, b);

    /// <summary>
    /// Input rows [0, R) (int16 codes <paramref name="xStride"/> apart, block scales <paramref name="xsStride"/> apart) x
    /// one panel of 32 weight rows: per block, the exact int32 sums of the 32 rows in two registers per input row, then
    /// acc = fma(float(sum), scale · xs, acc) per output; results into y[r · ys + 0..count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Int8Tile<TR>(byte* codes, float* scales, int pairs, int blocks, int pairsPerBlock, short* xq, long xStride,
        float* xs, long xsStride, float* y, long ys, int count) where TR : struct, IRows
    {
        int* x0 = (int*)xq, x1 = (int*)(xq + xStride), x2 = (int*)(xq + 2 * xStride), x3 = (int*)(xq + 3 * xStride);
        float* s0 = xs, s1 = xs + xsStride, s2 = xs + 2 * xsStride, s3 = xs + 3 * xsStride;
        var f00 = Vector512<float>.Zero; var f01 = f00; var f10 = f00; var f11 = f00;
        var f20 = f00; var f21 = f00; var f30 = f00; var f31 = f00;
        for (int b = 0, j = 0; b < blocks; b++)
        {
            var i00 = Vector512<int>.Zero; var i01 = i00; var i10 = i00; var i11 = i00;
            var i20 = i00; var i21 = i00; var i30 = i00; var i31 = i00;
            for (int end = Math.Min(pairs, j + pairsPerBlock); j < end; j++)
            {
                sbyte* c = (sbyte*)codes + (long)j * 64;
                var w0 = Avx512BW.ConvertToVector512Int16(Vector256.Load(c));
                var w1 = Avx512BW.ConvertToVector512Int16(Vector256.Load(c + 32));
                var xv = Vector512.Create(x0[j]).AsInt16();
                i00 = AddPairProducts(i00, w0, xv); i01 = AddPairProducts(i01, w1, xv);
                if (TR.Count > 1) { xv = Vector512.Create(x1[j]).AsInt16(); i10 = AddPairProducts(i10, w0, xv); i11 = AddPairProducts(i11, w1, xv); }
                if (TR.Count > 2) { xv = Vector512.Create(x2[j]).AsInt16(); i20 = AddPairProducts(i20, w0, xv); i21 = AddPairProducts(i21, w1, xv); }
                if (TR.Count > 3) { xv = Vector512.Create(x3[j]).AsInt16(); i30 = AddPairProducts(i30, w0, xv); i31 = AddPairProducts(i31, w1, xv); }
            }
            var sc0 = Vector512.Load(scales + (long)b * 32);
            var sc1 = Vector512.Load(scales + (long)b * 32 + 16);
            var s = Vector512.Create(s0[b]);
            f00 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i00), sc0 * s, f00);
            f01 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i01), sc1 * s, f01);
            if (TR.Count > 1)
            {
                s = Vector512.Create(s1[b]);
                f10 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i10), sc0 * s, f10);
                f11 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i11), sc1 * s, f11);
            }
            if (TR.Count > 2)
            {
                s = Vector512.Create(s2[b]);
                f20 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i20), sc0 * s, f20);
                f21 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i21), sc1 * s, f21);
            }
            if (TR.Count > 3)
            {
                s = Vector512.Create(s3[b]);
                f30 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i30), sc0 * s, f30);
                f31 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(i31), sc1 * s, f31);
            }
        }
        StorePanelRow(y, count, f00, f01);
        if (TR.Count > 1) StorePanelRow(y + ys, count, f10, f11);
        if (TR.Count > 2) StorePanelRow(y + 2 * ys, count, f20, f21);
        if (TR.Count > 3) StorePanelRow(y + 3 * ys, count, f30, f31);
    }

    /// <summary>Writes the first <paramref name="count"/> of the 32 outputs (lo, hi) to y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StorePanelRow(float* y, int count, Vector512<float> lo, Vector512<float> hi)
    {
        if (count == 32) { lo.Store(y); hi.Store(y + 16); return; }
        float* t = stackalloc float[32];
        lo.Store(t);
        hi.Store(t + 16);
        for (int i = 0; i < count; i++) y[i] = t[i];
    }

    /// <summary><see cref="Int8Tile{TR}"/> element by element: the same block sums and fma chain, for CPUs without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ScalarInt8Tile(byte* codes, float* scales, int pairs, int blocks, int pairsPerBlock, short* xq, long xStride,
        float* xs, long xsStride, int inputs, float* y, long ys, int count)
    {
        const int panelRows = QuantizedMatrix.PanelRows;
        for (int r = 0; r < inputs; r++)
            for (int i = 0; i < count; i++)
            {
                short* x = xq + r * xStride;
                float acc = 0f;
                for (int b = 0, j = 0; b < blocks; b++)
                {
                    int sum = 0;
                    for (int end = Math.Min(pairs, j + pairsPerBlock); j < end; j++)
                    {
                        sbyte* c = (sbyte*)codes + (long)j * 2 * panelRows + 2 * i;
                        sum += c[0] * x[2 * j] + c[1] * x[2 * j + 1];
                    }
                    acc = MathF.FusedMultiplyAdd(sum, scales[(long)b * panelRows + i] * xs[r * xsStride + b], acc);
                }
                y[r * ys + i] = acc;
            }
    }

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of the FP8 <paramref name="job"/> on this thread.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Fp8Rows(in MatmulJob job, int m0, int m1, int n0, int n1, bool vector)
    {
        var q = job.Quantized!;
        if (vector && m1 - m0 <= RegisterRows && q.RegisterDecodable)
        {
            for (int m = m0; m < m1;)
            {
                int inputs = Math.Min(TileInputs, m1 - m);
                for (int n = n0; n < n1; n += TileWeights)
                {
                    int count = Math.Min(TileWeights, n1 - n);
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
                    q.DecodeRow(Math.Min(n + i, n1 - 1), row);
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
