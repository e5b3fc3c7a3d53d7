using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// A weight matrix [Rows, Cols] in 8 bits: one code byte per weight and one float32 scale per row and
/// <see cref="BlockCols"/>-column block (weight = decode(code) * scale). int8 codes are symmetric (absmax / 127 per
/// 1x<see cref="BlockCols"/> block (<see cref="DefaultInt8BlockColumns"/>), round half to even); FP8 E4M3 codes share their scale over 128x128 blocks
/// (absmax / 448), stored per row so that matrices can be stacked by rows (gate and up) whatever their row count.
/// <para>Layout: the codes are packed at load into panels of <see cref="PanelRows"/> rows (the float32 GEMM's panel
/// width, <see cref="PackedWeight"/>), the layout <see cref="QuantizedGemm"/>'s outer-product kernels read. FP8: panel p
/// holds [Cols][32] codes (W[32p + r, k] at k · 32 + r); int8: panel p holds, per column pair j, the 64 bytes
/// (W[32p + r, 2j], W[32p + r, 2j + 1]) for r = 0..31 (the odd last column is zero). Both: one cache line per column
/// pair or per two columns, rows past Rows zero, scales [Panels][BlocksPerRow][32] (zero for the padding rows).
/// <see cref="Code"/>, <see cref="Value"/> and <see cref="Dequantize"/> give the row-major view.</para>
/// Native memory, freed on dispose; read by the kernels from any thread.
/// </summary>
public sealed unsafe class QuantizedMatrix : IDisposable
{
    /// <summary>Columns sharing one FP8 scale (DeepSeek's 128x128 blocks).</summary>
    public const int Fp8BlockCols = 128;
    /// <summary>Rows sharing one FP8 scale (DeepSeek's 128x128 blocks).</summary>
    public const int Fp8BlockRows = 128;
    /// <summary>32 columns per int8 scale: see the README's 8-bit section for the measurements behind it.</summary>
    public const int DefaultInt8BlockColumns = 32;
    /// <summary>The widest int8 block: the kernel's exact int32 block sums need BlockCols · 127 · 32767 &lt; 2^31.</summary>
    public const int MaxInt8BlockColumns = 512;
    /// <summary>Rows per int8 code panel (<see cref="PackedWeight.PanelWidth"/>: the float32 GEMM's panel width).</summary>
    public const int PanelRows = PackedWeight.PanelWidth;

    /// <summary>Throws unless <paramref name="blockCols"/> is a valid int8 block width (a multiple of 8 up to <see cref="MaxInt8BlockColumns"/>).</summary>
    public static int CheckInt8BlockColumns(int blockCols) =>
        blockCols >= 8 && blockCols % 8 == 0 && blockCols <= MaxInt8BlockColumns ? blockCols
            : throw new ArgumentOutOfRangeException(nameof(blockCols), $"int8 blocks are a positive multiple of 8 columns up to {MaxInt8BlockColumns}");

    public WeightQuantization Format { get; }
    public int Rows { get; }
    public int Cols { get; }
    /// <summary>Columns sharing one scale in a row.</summary>
    public int BlockCols { get; }
    public int BlocksPerRow { get; }
    /// <summary>Whether an FP8 matrix holds NaN codes (0x7F, 0xFF): the kernels then decode it through the table
    /// (the in-register bit decode has no NaN; see <see cref="Fp8E4M3"/>). Never for int8.</summary>
    public bool HasNaNCodes { get; private set; }
    /// <summary>Whether the FP8 kernels may decode the codes in registers: no NaN codes and every |scale| below 2^7 (so that the decode's 2^120 folds exactly into the scale: (code's bits ·
    /// 2^-120) · (scale · 2^120) is the same float32 product as decode(code) · scale).</summary>
    internal bool RegisterDecodable { get; private set; }
    /// <summary>The codes in panels (see the class remarks).</summary>
    internal byte* Codes { get; private set; }
    /// <summary>The scales [Panels][BlocksPerRow][32].</summary>
    internal float* Scales { get; private set; }
    /// <summary>Panels of <see cref="PanelRows"/> rows.</summary>
    internal int Panels => (Rows + PanelRows - 1) / PanelRows;
    /// <summary>int8: column pairs per panel (Cols rounded up to even, halved).</summary>
    internal int ColumnPairs => (Cols + 1) / 2;
    /// <summary>Code bytes per panel.</summary>
    internal long PanelCodeBytes => Format == WeightQuantization.Int8 ? (long)ColumnPairs * 2 * PanelRows : (long)Cols * PanelRows;
    long CodeBytes => Panels * PanelCodeBytes;
    long ScaleCount => (long)Panels * BlocksPerRow * PanelRows;

    /// <summary>Bytes held: codes plus scales, with the panels' padding.</summary>
    public long Bytes => CodeBytes + ScaleCount * sizeof(float);

    QuantizedMatrix(WeightQuantization format, int rows, int cols, int blockCols)
    {
        if (format == WeightQuantization.None) throw new ArgumentException("a quantized matrix needs int8 or fp8");
        Format = format;
        Rows = rows;
        Cols = cols;
        BlockCols = format == WeightQuantization.Int8 ? CheckInt8BlockColumns(blockCols) : blockCols;
        BlocksPerRow = (cols + BlockCols - 1) / BlockCols;
        Codes = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(1L, CodeBytes), 64);
        Scales = (float*)NativeMemory.AlignedAlloc((nuint)Math.Max(1L, ScaleCount * sizeof(float)), 64);
        NativeMemory.Clear(Codes, (nuint)CodeBytes);   // the padding rows and column
        NativeMemory.Clear(Scales, (nuint)(ScaleCount * sizeof(float)));
    }

    /// <summary>Where code [row, col] is stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    long CodeIndex(int row, int col) => Format == WeightQuantization.Int8
        ? ((long)(row / PanelRows) * ColumnPairs + (col >> 1)) * (2 * PanelRows) + (row % PanelRows) * 2 + (col & 1)
        : ((long)(row / PanelRows) * Cols + col) * PanelRows + row % PanelRows;

    /// <summary>Where the scale of [row, block] is stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    long ScaleIndex(int row, int block) => ((long)(row / PanelRows) * BlocksPerRow + block) * PanelRows + row % PanelRows;

    /// <summary>The code byte at [row, col].</summary>
    public byte Code(int row, int col) => Codes[CodeIndex(row, col)];

    /// <summary>The scale of row <paramref name="row"/>'s block <paramref name="block"/>.</summary>
    public float Scale(int row, int block) => Scales[ScaleIndex(row, block)];

    /// <summary>Quantizes <paramref name="weight"/> [rows, cols] (any float dtype; not disposed here); int8 with
    /// <paramref name="int8BlockColumns"/> columns per scale.</summary>
    public static QuantizedMatrix Quantize(Tensor weight, WeightQuantization format, int int8BlockColumns = DefaultInt8BlockColumns)
    {
        if (weight.dim() != 2) throw new ArgumentException("only matrices are quantized", nameof(weight));
        int rows = (int)weight.shape[0], cols = (int)weight.shape[1];
        var q = new QuantizedMatrix(format, rows, cols, format == WeightQuantization.Int8 ? int8BlockColumns : Fp8BlockCols);
        using (NewDisposeScope())
        {
            var f = weight.dtype == ScalarType.Float32 && weight.is_contiguous() ? weight : weight.to(ScalarType.Float32).contiguous();
            float* src = TensorMemory.Pointer<float>(f);
            if (format == WeightQuantization.Int8)
                KernelParallel.For(q.Panels, p => q.QuantizeInt8Rows(src, p * PanelRows, Math.Min(rows, p * PanelRows + PanelRows)));
            else
                KernelParallel.For((rows + Fp8BlockRows - 1) / Fp8BlockRows, band => q.QuantizeFp8Band(src, band * Fp8BlockRows, Math.Min(rows, band * Fp8BlockRows + Fp8BlockRows)));
        }
        q.FindSpecialValues();
        return q;
    }

    void QuantizeInt8Rows(float* src, int r0, int r1)
    {
        for (int r = r0; r < r1; r++)
            for (int b = 0; b < BlocksPerRow; b++)
            {
                int c0 = b * BlockCols, c1 = Math.Min(Cols, c0 + BlockCols);
                float* s = src + (long)r * Cols;
                float amax = 0;
                for (int c = c0; c < c1; c++) amax = MathF.Max(amax, MathF.Abs(s[c]));
                float scale = amax / 127f;
                Scales[ScaleIndex(r, b)] = scale;
                float inv = scale > 0 ? 1f / scale : 0f;
                for (int c = c0; c < c1; c++) Codes[CodeIndex(r, c)] = (byte)(sbyte)Math.Clamp((int)MathF.Round(s[c] * inv, MidpointRounding.ToEven), -127, 127);
            }
    }

    void QuantizeFp8Band(float* src, int r0, int r1)
    {
        for (int b = 0; b < BlocksPerRow; b++)
        {
            int c0 = b * BlockCols, c1 = Math.Min(Cols, c0 + BlockCols);
            float amax = 0;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) amax = MathF.Max(amax, MathF.Abs(src[(long)r * Cols + c]));
            float scale = amax / Fp8E4M3.MaxFinite;
            float inv = scale > 0 ? 1f / scale : 0f;
            for (int r = r0; r < r1; r++)
            {
                Scales[ScaleIndex(r, b)] = scale;
                for (int c = c0; c < c1; c++) Codes[CodeIndex(r, c)] = Fp8E4M3.Encode(src[(long)r * Cols + c] * inv);
            }
        }
    }

    /// <summary>
    /// An FP8 E4M3 matrix as a checkpoint stores it: <paramref name="codes"/> [rows, cols] and the block scales
    /// <paramref name="blockScales"/> [ceil(rows/128), ceil(cols/128)] (DeepSeek's <c>weight_scale_inv</c>: weight = code * scale).
    /// </summary>
    public static QuantizedMatrix FromFp8Blocks(ReadOnlySpan<byte> codes, int rows, int cols, ReadOnlySpan<float> blockScales)
    {
        int blockRows = (rows + Fp8BlockRows - 1) / Fp8BlockRows, blockCols = (cols + Fp8BlockCols - 1) / Fp8BlockCols;
        if (codes.Length != (long)rows * cols) throw new ArgumentException($"expected {(long)rows * cols} FP8 codes, got {codes.Length}");
        if (blockScales.Length != blockRows * blockCols)
            throw new ArgumentException($"expected [{blockRows}, {blockCols}] block scales for a [{rows}, {cols}] FP8 matrix, got {blockScales.Length} values");
        var q = new QuantizedMatrix(WeightQuantization.Fp8, rows, cols, Fp8BlockCols);
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++) q.Codes[q.CodeIndex(r, c)] = codes[r * cols + c];
            for (int b = 0; b < blockCols; b++)
                q.Scales[q.ScaleIndex(r, b)] = blockScales[(r / Fp8BlockRows) * blockCols + b];
        }
        q.FindSpecialValues();
        return q;
    }

    /// <summary>The rows of <paramref name="top"/> followed by those of <paramref name="bottom"/> (same format and columns).</summary>
    public static QuantizedMatrix StackRows(QuantizedMatrix top, QuantizedMatrix bottom)
    {
        if (top.Format != bottom.Format || top.Cols != bottom.Cols || top.BlockCols != bottom.BlockCols)
            throw new ArgumentException("stacked matrices need the same format, columns and blocks");
        var q = new QuantizedMatrix(top.Format, top.Rows + bottom.Rows, top.Cols, top.BlockCols);
        // Panels do not split at top.Rows: copy row by row.
        KernelParallel.For(q.Panels, p =>
        {
            for (int r = p * PanelRows, end = Math.Min(q.Rows, r + PanelRows); r < end; r++)
            {
                var (from, row) = r < top.Rows ? (top, r) : (bottom, r - top.Rows);
                for (int c = 0; c < q.Cols; c++) q.Codes[q.CodeIndex(r, c)] = from.Code(row, c);
                for (int b = 0; b < q.BlocksPerRow; b++) q.Scales[q.ScaleIndex(r, b)] = from.Scale(row, b);
            }
        });
        q.FindSpecialValues();
        return q;
    }

    void FindSpecialValues()
    {
        RegisterDecodable = true;
        if (Format != WeightQuantization.Fp8) return;
        long n = CodeBytes;   // the padding is zero, not NaN
        for (long i = 0; i < n && !HasNaNCodes; i += int.MaxValue)
        {
            var span = new ReadOnlySpan<byte>(Codes + i, (int)Math.Min(int.MaxValue, n - i));
            HasNaNCodes = span.IndexOfAny((byte)0x7F, (byte)0xFF) >= 0;
        }
        float maxScale = 0;
        for (long i = 0, count = ScaleCount; i < count; i++) maxScale = MathF.Max(maxScale, MathF.Abs(Scales[i]));
        RegisterDecodable &= !HasNaNCodes && maxScale < 128f;   // NaN scales: MathF.Max gives NaN, and the test fails
    }

    /// <summary>The weight value at [row, col].</summary>
    public float Value(int row, int col)
    {
        byte code = Code(row, col);
        float v = Format == WeightQuantization.Int8 ? (sbyte)code : Fp8E4M3.Decode(code);
        return v * Scale(row, col / BlockCols);
    }

    /// <summary>A float32 copy [Rows, Cols] (decode(code) * scale: the values the kernels compute with; for libtorch-only
    /// loads and tests); the caller disposes it.</summary>
    public Tensor Dequantize()
    {
        var t = empty([Rows, Cols], ScalarType.Float32);
        float* dst = TensorMemory.Pointer<float>(t);
        KernelParallel.For((Rows + 63) / 64, chunk =>
        {
            for (int r = chunk * 64, end = Math.Min(Rows, chunk * 64 + 64); r < end; r++)
                DecodeRow(r, dst + (long)r * Cols);
        });
        return t;
    }

    /// <summary>Row <paramref name="row"/> as float32 values decode(code) * scale into <paramref name="dst"/> (one
    /// multiply per value, the values the kernels compute with).</summary>
    void DecodeRow(int row, float* dst)
    {
        for (int c = 0; c < Cols; c++) dst[c] = Value(row, c);
    }

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~QuantizedMatrix() => Free();

    void Free()
    {
        if (Codes is not null) NativeMemory.AlignedFree(Codes);
        if (Scales is not null) NativeMemory.AlignedFree(Scales);
        Codes = null;
        Scales = null;
    }
}
