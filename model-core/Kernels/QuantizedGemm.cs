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
/// <para><b>FP8 E4M3</b> (codes in 32-row panels [K][32]): each output is the float32 GEMM's chain
/// (<see cref="InvariantGemm"/>) over the dequantized weights w = decode(code) · scale (exactly
/// <see cref="QuantizedMatrix.Dequantize"/>'s values): acc = fma(x[k], w[n, k], acc) in increasing k from +0, so an FP8
/// matrix gives the bits of the float32 GEMM over its dequantized copy. Up to <see cref="RegisterRows"/> input rows the
/// codes are decoded in registers (sign-extend, shift and mask into a float32, times the scale · 2^120, see
/// <see cref="Fp8E4M3"/>) and fused with the FMAs; more rows decode the work item's panels once into a per-thread
/// scratch and run the float32 micro-kernel over it (6 x 32 tiles, K blocks of 256). Matrices with NaN codes or scales
/// ≥ 2^7 (<see cref="QuantizedMatrix.RegisterDecodable"/> false) decode through the table into the scratch.</para>
/// Work items (blocks of weight rows x blocks of input rows over all the jobs of a call) run on every core
/// (<see cref="KernelParallel"/>). Without AVX-512 the same operations run in scalar code: the same bits.
/// </summary>
public static unsafe class QuantizedGemm
{
    /// <summary>FP8: input rows up to which the weights are decoded in registers (one tile); more use the dequantized panel.</summary>
    public const int RegisterRows = 4;
    /// <summary>Input rows of a decode-sized batch (work items then split the weight rows finer).</summary>
    public const int DecodeRows = 16;
    /// <summary>int8: the largest |xq| of the quantized inputs.</summary>
    const float InputCodeMax = 32767f;
    const int TileInputs = 4;
    const int BlockInputs = 48;        // int8: input rows per work item (a multiple of TileInputs)
    const int Fp8BlockInputs = 192;    // FP8: input rows per work item, each decoding its panels once (the float32 GEMM's block)
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
            int n0 = local / inputBlocks * block, m0 = local % inputBlocks * InputBlockFor(job);
            int n1 = Math.Min(job.N, n0 + block), m1 = Math.Min(job.M, m0 + InputBlockFor(job));
            if (job.Quantized is null) InvariantGemm.Rows(job, m0, m1, n0, n1);
            else if (job.Quantized.Format == WeightQuantization.Int8) Int8Rows(job, quantized[j], m0, m1, n0, n1, vector);
            else Fp8Rows(job, m0, m1, n0, n1, vector);
        });
    }

    /// <summary>Runs one job on every core.</summary>
    public static void Run(in MatmulJob job, bool scalar = false) => Run([job], 1, scalar);

    static int BlockWeightsFor(in MatmulJob job) =>
        job.M <= DecodeRows && job.Quantized is not { Format: WeightQuantization.Fp8 } ? SmallBlockWeights : BlockWeights;   // FP8: two panels per tile
    static int WeightBlocks(in MatmulJob job) { int b = BlockWeightsFor(job); return (job.N + b - 1) / b; }
    static int InputBlockFor(in MatmulJob job) => job.Quantized is { Format: WeightQuantization.Fp8 } ? Fp8BlockInputs : BlockInputs;
    static int InputBlocks(in MatmulJob job) => (job.M + InputBlockFor(job) - 1) / InputBlockFor(job);

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

    /// <summary>
    /// Output rows [m0, m1) x columns [n0, n1) of the FP8 <paramref name="job"/> on this thread (n0 a multiple of the
    /// panel rows): up to <see cref="RegisterRows"/> rows with the codes decoded in registers (<see cref="Fp8Tile{TR}"/>),
    /// more by decoding the item's panels once into a per-thread scratch in <see cref="PackedWeight"/>'s layout and
    /// running the float32 GEMM's micro-kernel over it for every row (<see cref="InvariantGemm.Rows(in MatmulJob, int, int, int, int, GemmPath)"/>).
    /// Both compute each output as the float32 GEMM does over <see cref="QuantizedMatrix.Dequantize"/>'s values: the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Fp8Rows(in MatmulJob job, int m0, int m1, int n0, int n1, bool vector)
    {
        var q = job.Quantized!;
        const int panelRows = QuantizedMatrix.PanelRows;
        int k = job.K, blocks = q.BlocksPerRow;
        if (vector && m1 - m0 <= RegisterRows && q.RegisterDecodable)
        {
            for (int n = n0; n < n1; n += panelRows)
            {
                int count = Math.Min(panelRows, n1 - n), p = n / panelRows;
                byte* codes = q.Codes + p * q.PanelCodeBytes;
                float* scales = q.Scales + (long)p * blocks * panelRows, x = job.X + (long)m0 * k, y = job.Y + (long)m0 * job.YStride + n;
                if (m1 - m0 <= 2 && n1 - n > panelRows)
                {
                    // Two panels at once: four independent fma chains per input row instead of two.
                    int count2 = Math.Min(panelRows, n1 - n - panelRows);
                    if (m1 - m0 == 1) Fp8PanelPair<R1>(codes, scales, q.PanelCodeBytes, (long)blocks * panelRows, k, q.BlockCols, x, y, job.YStride, count2);
                    else Fp8PanelPair<R2>(codes, scales, q.PanelCodeBytes, (long)blocks * panelRows, k, q.BlockCols, x, y, job.YStride, count2);
                    n += panelRows;
                    continue;
                }
                switch (m1 - m0)
                {
                    case 1: Fp8Tile<R1>(codes, scales, k, q.BlockCols, x, y, job.YStride, count); break;
                    case 2: Fp8Tile<R2>(codes, scales, k, q.BlockCols, x, y, job.YStride, count); break;
                    case 3: Fp8Tile<R3>(codes, scales, k, q.BlockCols, x, y, job.YStride, count); break;
                    default: Fp8Tile<R4>(codes, scales, k, q.BlockCols, x, y, job.YStride, count); break;
                }
            }
            return;
        }
        int p0 = n0 / panelRows, p1 = (n1 + panelRows - 1) / panelRows;
        long panelFloats = (long)k * panelRows, need = (p1 - p0) * panelFloats;
        var scratch = t_panel is { } s && s.Length >= need ? s : t_panel = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 4096), pinned: true);
        fixed (float* panels = scratch)
        {
            for (int p = p0; p < p1; p++) DecodePanel(q, p, panels + (p - p0) * panelFloats, vector && q.RegisterDecodable);
            var decoded = new MatmulJob(panels - p0 * panelFloats, null, job.N, k, job.X, job.M, job.Y, job.YStride);
            InvariantGemm.Rows(decoded, m0, m1, n0, n1, vector ? InvariantGemm.BestPath : GemmPath.Scalar);
        }
    }

    /// <summary>Panel <paramref name="p"/> of an FP8 matrix as float32 [K][32] (decode(code) · scale; zero in the padding rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DecodePanel(QuantizedMatrix q, int p, float* dst, bool vector)
    {
        const int panelRows = QuantizedMatrix.PanelRows;
        byte* codes = q.Codes + p * q.PanelCodeBytes;
        float* scales = q.Scales + (long)p * q.BlocksPerRow * panelRows;
        for (int b = 0, i = 0; b < q.BlocksPerRow; b++)
        {
            float* sc = scales + (long)b * panelRows;
            int end = Math.Min(q.Cols, i + q.BlockCols);
            if (vector)
            {
                var s0 = Vector512.Load(sc) * Fp8E4M3.DecodeFactor;
                var s1 = Vector512.Load(sc + 16) * Fp8E4M3.DecodeFactor;
                for (; i < end; i++)
                {
                    byte* c = codes + (long)i * panelRows;
                    (Fp8E4M3.DecodeScaled16(c) * s0).Store(dst + (long)i * panelRows);
                    (Fp8E4M3.DecodeScaled16(c + 16) * s1).Store(dst + (long)i * panelRows + 16);
                }
            }
            else
                for (; i < end; i++)
                    for (int r = 0; r < panelRows; r++) dst[(long)i * panelRows + r] = Fp8E4M3.Decode(codes[(long)i * panelRows + r]) * sc[r];
        }
    }

    /// <summary>
    /// Input rows x[0..R) (K floats apart) x one FP8 panel of 32 weight rows, the codes decoded in registers: per column k,
    /// 32 codes decoded (<see cref="Fp8E4M3.DecodeScaled16"/>) times the block's scales · 2^120 (exactly decode(code) · scale,
    /// as <see cref="QuantizedMatrix.RegisterDecodable"/> guarantees) and acc = fma(x[r, k], w, acc) per output, in
    /// increasing k from +0: the float32 GEMM's chain. Results into y[r · ys + 0..count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Fp8Tile<TR>(byte* codes, float* scales, int k, int blockCols, float* x, float* y, long ys, int count) where TR : struct, IRows
    {
        const int panelRows = QuantizedMatrix.PanelRows;
        float* x0 = x, x1 = x + (TR.Count > 1 ? k : 0), x2 = x + (TR.Count > 2 ? 2L * k : 0), x3 = x + (TR.Count > 3 ? 3L * k : 0);
        var a0 = Vector512<float>.Zero; var b0 = a0; var a1 = a0; var b1 = a0; var a2 = a0; var b2 = a0; var a3 = a0; var b3 = a0;
        for (int i = 0; i < k;)
        {
            float* sc = scales + (long)(i / blockCols) * panelRows;
            var s0 = Vector512.Load(sc) * Fp8E4M3.DecodeFactor;
            var s1 = Vector512.Load(sc + 16) * Fp8E4M3.DecodeFactor;
            for (int end = Math.Min(k, i + blockCols); i < end; i++)
            {
                byte* c = codes + (long)i * panelRows;
                var wa = Fp8E4M3.DecodeScaled16(c) * s0;
                var wb = Fp8E4M3.DecodeScaled16(c + 16) * s1;
                var v = Vector512.Create(x0[i]);
                a0 = Avx512F.FusedMultiplyAdd(v, wa, a0); b0 = Avx512F.FusedMultiplyAdd(v, wb, b0);
                if (TR.Count > 1) { v = Vector512.Create(x1[i]); a1 = Avx512F.FusedMultiplyAdd(v, wa, a1); b1 = Avx512F.FusedMultiplyAdd(v, wb, b1); }
                if (TR.Count > 2) { v = Vector512.Create(x2[i]); a2 = Avx512F.FusedMultiplyAdd(v, wa, a2); b2 = Avx512F.FusedMultiplyAdd(v, wb, b2); }
                if (TR.Count > 3) { v = Vector512.Create(x3[i]); a3 = Avx512F.FusedMultiplyAdd(v, wa, a3); b3 = Avx512F.FusedMultiplyAdd(v, wb, b3); }
            }
        }
        StorePanelRow(y, count, a0, b0);
        if (TR.Count > 1) StorePanelRow(y + ys, count, a1, b1);
        if (TR.Count > 2) StorePanelRow(y + 2 * ys, count, a2, b2);
        if (TR.Count > 3) StorePanelRow(y + 3 * ys, count, a3, b3);
    }

    /// <summary><see cref="Fp8Tile{TR}"/> over two consecutive panels (64 outputs; up to two input rows): the same
    /// chains, twice as many of them in flight.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Fp8PanelPair<TR>(byte* codes, float* scales, long panelBytes, long panelScales, int k, int blockCols, float* x, float* y, long ys, int count2) where TR : struct, IRows
    {
        const int panelRows = QuantizedMatrix.PanelRows;
        float* x0 = x, x1 = x + (TR.Count > 1 ? k : 0);
        byte* codes2 = codes + panelBytes;
        var a0 = Vector512<float>.Zero; var b0 = a0; var c0 = a0; var d0 = a0; var a1 = a0; var b1 = a0; var c1 = a0; var d1 = a0;
        for (int i = 0; i < k;)
        {
            float* sc = scales + (long)(i / blockCols) * panelRows;
            var s0 = Vector512.Load(sc) * Fp8E4M3.DecodeFactor;
            var s1 = Vector512.Load(sc + 16) * Fp8E4M3.DecodeFactor;
            var s2 = Vector512.Load(sc + panelScales) * Fp8E4M3.DecodeFactor;
            var s3 = Vector512.Load(sc + panelScales + 16) * Fp8E4M3.DecodeFactor;
            for (int end = Math.Min(k, i + blockCols); i < end; i++)
            {
                byte* c = codes + (long)i * panelRows, e = codes2 + (long)i * panelRows;
                var wa = Fp8E4M3.DecodeScaled16(c) * s0;
                var wb = Fp8E4M3.DecodeScaled16(c + 16) * s1;
                var wc = Fp8E4M3.DecodeScaled16(e) * s2;
                var wd = Fp8E4M3.DecodeScaled16(e + 16) * s3;
                var v = Vector512.Create(x0[i]);
                a0 = Avx512F.FusedMultiplyAdd(v, wa, a0); b0 = Avx512F.FusedMultiplyAdd(v, wb, b0);
                c0 = Avx512F.FusedMultiplyAdd(v, wc, c0); d0 = Avx512F.FusedMultiplyAdd(v, wd, d0);
                if (TR.Count > 1)
                {
                    v = Vector512.Create(x1[i]);
                    a1 = Avx512F.FusedMultiplyAdd(v, wa, a1); b1 = Avx512F.FusedMultiplyAdd(v, wb, b1);
                    c1 = Avx512F.FusedMultiplyAdd(v, wc, c1); d1 = Avx512F.FusedMultiplyAdd(v, wd, d1);
                }
            }
        }
        StorePanelRow(y, panelRows, a0, b0);
        StorePanelRow(y + panelRows, count2, c0, d0);
        if (TR.Count > 1)
        {
            StorePanelRow(y + ys, panelRows, a1, b1);
            StorePanelRow(y + ys + panelRows, count2, c1, d1);
        }
    }

    interface IRows { static abstract int Count { get; } }
    readonly struct R1 : IRows { public static int Count => 1; }
    readonly struct R2 : IRows { public static int Count => 2; }
    readonly struct R3 : IRows { public static int Count => 3; }
    readonly struct R4 : IRows { public static int Count => 4; }
}
