using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>How <see cref="InvariantGemm"/> computes: AVX-512, AVX2+FMA, or scalar code; all three give the same bits.</summary>
public enum GemmPath { Avx512, Avx2, Scalar }

/// <summary>
/// Batch-invariant float32 GEMM y[m, n] = Σ_k x[m, k] · W[n, k] (x [M, K] row-major, W packed in column panels:
/// <see cref="PackedWeight"/>), for every row count: decode (one row), a decode batch and a prefill chunk give the same
/// bits for the same input row. Outer-product design: every output element is ONE accumulator,
/// c = fma(x[m, k], W[n, k], c) for k = 0, 1, .., K-1 in increasing k starting from c = +0, whatever the tile, the
/// vector width or the batch. The micro-kernel keeps up to 6 input rows × one 32-wide panel in registers (AVX-512: 12
/// zmm accumulators; AVX2: 6 rows × 16 outputs, each half-panel in turn; scalar: <see cref="MathF.FusedMultiplyAdd"/>)
/// and for each k broadcasts x[m, k] and fuses it with the panel's row k. For more than two tiles of input rows K is
/// blocked (<see cref="BlockK"/> columns, so a panel slice stays in L1 while it serves every input row of a work item;
/// up to two tiles stream their panels whole, one sequential read per work item): the partial sums go to y and are
/// reloaded for the next block, which leaves each element's chain of fused multiply-adds unchanged. Work items (blocks
/// of input rows × groups of panels, over all jobs of a call) run on every core (<see cref="KernelParallel"/>); for a
/// decode batch there is one block of rows, so each weight byte is read once per call. Plain memory only.
/// </summary>
public static unsafe class InvariantGemm
{
    const int Panel = PackedWeight.PanelWidth;
    internal const int TileRows = 6; // input rows per micro-kernel call
    const int StreamRows = 2 * TileRows;   // up to this many input rows per work item, K is not blocked
    /// <summary>How far ahead a tile streaming its panel from memory prefetches it: 4 panel rows (512 bytes). The
    /// hardware prefetcher alone left a 3-row tile reading ~30% slower than a 1-row one: its FMAs, waiting on the
    /// loads, fill the scheduler and stop further loads from issuing. Farther (2-4 KB) measured slower.</summary>
    const int PrefetchFloats = 4 * Panel;
    /// <summary>Columns of x (rows of a panel) per K block: a 256 x 32 panel slice is 32 KiB.</summary>
    public const int BlockK = 256;
    const int MaxBlockRows = 192;    // input rows per work item (a block of x: 192 x 256 floats, in L2)
    const long ItemWork = 1L << 24;  // K x 32 x (rows + 8) per work item: the thread pool's overhead is small, x reused over panels

    /// <summary>The fastest path this CPU runs.</summary>
    public static GemmPath BestPath { get; } =
        Avx512F.IsSupported ? GemmPath.Avx512 : Avx2.IsSupported && Fma.IsSupported ? GemmPath.Avx2 : GemmPath.Scalar;

    /// <summary>One work item's split of a job: blocks of <see cref="BlockRows"/> input rows × groups of <see cref="GroupPanels"/> panels.</summary>
    readonly record struct Split(int BlockRows, int RowBlocks, int GroupPanels, int Groups)
    {
        public int Items => RowBlocks * Groups;
    }

    static Split SplitOf(in MatmulJob job)
    {
        int rowBlocks = (job.M + MaxBlockRows - 1) / MaxBlockRows;
        int blockRows = (job.M + rowBlocks - 1) / rowBlocks;
        blockRows = (blockRows + TileRows - 1) / TileRows * TileRows;
        int panels = (job.N + Panel - 1) / Panel;
        long perPanel = (long)job.K * Panel * (blockRows + 8);
        int group = (int)Math.Clamp((ItemWork + perPanel - 1) / perPanel, 1, panels);
        // At least two items per thread for one job, so a single projection uses every core.
        int groupsWanted = (2 * KernelParallel.Threads + rowBlocks - 1) / rowBlocks;
        group = Math.Max(1, Math.Min(group, (panels + groupsWanted - 1) / groupsWanted));
        return new Split(blockRows, rowBlocks, group, (panels + group - 1) / group);
    }

    /// <summary>Runs the float32 <paramref name="jobs"/> (every one with packed <see cref="MatmulJob.Weights"/>) on every core.</summary>
    public static void Run(MatmulJob[] jobs, int count)
    {
        if (count == 0) return;
        var splits = new Split[count];
        for (int j = 0; j < count; j++)
        {
            var job = jobs[j];
            if (job.Quantized is not null || job.Weights == null) throw new ArgumentException("the invariant GEMM takes packed float32 weights");
            if (job.M > 0) splits[j] = SplitOf(job);
        }
        KernelParallel.ForJobItems(count, j => jobs[j].M > 0 ? splits[j].Items : 0, (j, local) =>
        {
            var job = jobs[j];
            var split = splits[j];
            // Consecutive items share a block of input rows, which then stays in this core's L2.
            int m0 = local / split.Groups * split.BlockRows, n0 = local % split.Groups * split.GroupPanels * Panel;
            Rows(job, m0, Math.Min(job.M, m0 + split.BlockRows), n0, Math.Min(job.N, n0 + split.GroupPanels * Panel));
        });
    }

    /// <summary>Runs one float32 job on every core.</summary>
    public static void Run(in MatmulJob job) => Run([job], 1);

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of <paramref name="job"/> on this thread.</summary>
    public static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1) => Rows(job, m0, m1, n0, n1, BestPath);

    /// <summary>Output rows [m0, m1) x columns [n0, n1) of <paramref name="job"/> on this thread through <paramref name="path"/>
    /// (which the CPU must support). Loops: K blocks, then the panels of [n0, n1), then tiles of up to six input rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Rows(in MatmulJob job, int m0, int m1, int n0, int n1, GemmPath path)
    {
        if (m0 >= m1 || n0 >= n1) return;
        int k = job.K;
        long xs = k, ys = job.YStride;
        var scratch = stackalloc float[TileRows * Panel];   // a tile whose panel is cut by n0, n1
        // Up to two tiles of rows (a decode batch) stream their panels whole: consecutive panels lie one after another,
        // one sequential read the prefetcher follows (blocking K would jump between panels every 32 KiB); a second
        // tile reads the panel again from L2.
        int blockK = m1 - m0 <= StreamRows ? k : BlockK;
        for (int k0 = 0; k0 < k; k0 += blockK)
        {
            int kc = Math.Min(blockK, k - k0);
            bool accumulate = k0 > 0;
            for (int p = n0 / Panel; p * Panel < n1; p++)
            {
                float* panel = job.Weights + ((long)p * k + k0) * Panel;
                int c0 = Math.Max(n0 - p * Panel, 0), c1 = Math.Min(n1 - p * Panel, Panel);
                bool whole = c0 == 0 && c1 == Panel;
                for (int m = m0; m < m1; m += TileRows)
                {
                    int rows = Math.Min(TileRows, m1 - m);
                    float* x = job.X + m * xs + k0;
                    float* y = job.Y + m * ys + p * Panel;
                    bool first = m == m0;   // the tile that reads this panel slice from memory; the rest find it in cache
                    if (whole)
                        Tile(path, rows, x, xs, panel, kc, y, ys, accumulate, first);
                    else
                    {
                        if (accumulate)
                            for (int r = 0; r < rows; r++)
                                for (int c = c0; c < c1; c++) scratch[r * Panel + c] = y[r * ys + c];
                        Tile(path, rows, x, xs, panel, kc, scratch, Panel, accumulate, first);
                        for (int r = 0; r < rows; r++)
                            for (int c = c0; c < c1; c++) y[r * ys + c] = scratch[r * Panel + c];
                    }
                }
            }
        }
    }

    /// <summary>The micro-kernel: y[r, 0..32) (+)= Σ_i x[r, i] · panel[i, 0..32) for r &lt; <paramref name="rows"/> (1..6) and
    /// i &lt; <paramref name="kc"/>, one fused multiply-add chain per output in increasing i (starting from y with
    /// <paramref name="accumulate"/>, else +0); panel rows 32 floats apart. Also <see cref="PrefillAttention"/>'s.
    /// <paramref name="prefetch"/>: the panel comes from memory, so prefetch it <see cref="PrefetchFloats"/> ahead (no
    /// effect on the arithmetic).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Tile(GemmPath path, int rows, float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate, bool prefetch = false)
    {
        prefetch &= rows > 1;   // one row's two FMAs per panel row leave the loads free to run ahead without help
        switch (path)
        {
            case GemmPath.Avx512:
                if (prefetch) Tile512<Ahead>(rows, x, xs, panel, kc, y, ys, accumulate);
                else Tile512<InCache>(rows, x, xs, panel, kc, y, ys, accumulate);
                break;
            case GemmPath.Avx2:
                for (int half = 0; half < Panel; half += 16)
                    if (prefetch) Tile256<Ahead>(rows, x, xs, panel + half, kc, y + half, ys, accumulate);
                    else Tile256<InCache>(rows, x, xs, panel + half, kc, y + half, ys, accumulate);
                break;
            default: ScalarTile(rows, x, xs, panel, kc, y, ys, accumulate); break;
        }
    }

    static void Tile512<TFetch>(int rows, float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate) where TFetch : struct, IFetch
    {
        switch (rows)
        {
            case 1: Tile512<R1, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 2: Tile512<R2, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 3: Tile512<R3, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 4: Tile512<R4, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 5: Tile512<R5, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            default: Tile512<R6, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
        }
    }

    static void Tile256<TFetch>(int rows, float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate) where TFetch : struct, IFetch
    {
        switch (rows)
        {
            case 1: Tile256<R1, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 2: Tile256<R2, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 3: Tile256<R3, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 4: Tile256<R4, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            case 5: Tile256<R5, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
            default: Tile256<R6, TFetch>(x, xs, panel, kc, y, ys, accumulate); break;
        }
    }

    /// <summary>Whether a tile prefetches its panel <see cref="PrefetchFloats"/> ahead (a panel streamed from memory) or not
    /// (a panel already in cache: attention's packed keys and values, the later tiles of a K block).</summary>
    interface IFetch { static abstract bool Prefetches { get; } }
    readonly struct Ahead : IFetch { public static bool Prefetches => true; }
    readonly struct InCache : IFetch { public static bool Prefetches => false; }

    interface IRows { static abstract int Count { get; } }
    readonly struct R1 : IRows { public static int Count => 1; }
    readonly struct R2 : IRows { public static int Count => 2; }
    readonly struct R3 : IRows { public static int Count => 3; }
    readonly struct R4 : IRows { public static int Count => 4; }
    readonly struct R5 : IRows { public static int Count => 5; }
    readonly struct R6 : IRows { public static int Count => 6; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Start512(bool accumulate, float* y) => accumulate ? Vector512.Load(y) : Vector512<float>.Zero;

    /// <summary>TRows.Count input rows (<paramref name="xs"/> floats apart) x one 32-wide panel for <paramref name="kc"/>
    /// values of k: per k, the panel row as two zmm and each row's x[m, k] broadcast, twelve accumulators at most.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile512<TRows, TFetch>(float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate) where TRows : struct, IRows where TFetch : struct, IFetch
    {
        int rows = TRows.Count;
        float* x0 = x, x1 = x + (rows > 1 ? xs : 0), x2 = x + (rows > 2 ? 2 * xs : 0);
        float* x3 = x + (rows > 3 ? 3 * xs : 0), x4 = x + (rows > 4 ? 4 * xs : 0), x5 = x + (rows > 5 ? 5 * xs : 0);
        float* y0 = y, y1 = y + (rows > 1 ? ys : 0), y2 = y + (rows > 2 ? 2 * ys : 0);
        float* y3 = y + (rows > 3 ? 3 * ys : 0), y4 = y + (rows > 4 ? 4 * ys : 0), y5 = y + (rows > 5 ? 5 * ys : 0);
        var a0 = Start512(accumulate, y0); var b0 = Start512(accumulate, y0 + 16);
        var a1 = rows > 1 ? Start512(accumulate, y1) : default; var b1 = rows > 1 ? Start512(accumulate, y1 + 16) : default;
        var a2 = rows > 2 ? Start512(accumulate, y2) : default; var b2 = rows > 2 ? Start512(accumulate, y2 + 16) : default;
        var a3 = rows > 3 ? Start512(accumulate, y3) : default; var b3 = rows > 3 ? Start512(accumulate, y3 + 16) : default;
        var a4 = rows > 4 ? Start512(accumulate, y4) : default; var b4 = rows > 4 ? Start512(accumulate, y4 + 16) : default;
        var a5 = rows > 5 ? Start512(accumulate, y5) : default; var b5 = rows > 5 ? Start512(accumulate, y5 + 16) : default;
        float* w = panel;
        for (int i = 0; i < kc; i++, w += Panel)
        {
            if (TFetch.Prefetches) { Sse.Prefetch0(w + PrefetchFloats); Sse.Prefetch0(w + PrefetchFloats + 16); }
            var wa = Vector512.Load(w);
            var wb = Vector512.Load(w + 16);
            var v = Vector512.Create(x0[i]);
            a0 = Avx512F.FusedMultiplyAdd(v, wa, a0); b0 = Avx512F.FusedMultiplyAdd(v, wb, b0);
            if (rows > 1) { v = Vector512.Create(x1[i]); a1 = Avx512F.FusedMultiplyAdd(v, wa, a1); b1 = Avx512F.FusedMultiplyAdd(v, wb, b1); }
            if (rows > 2) { v = Vector512.Create(x2[i]); a2 = Avx512F.FusedMultiplyAdd(v, wa, a2); b2 = Avx512F.FusedMultiplyAdd(v, wb, b2); }
            if (rows > 3) { v = Vector512.Create(x3[i]); a3 = Avx512F.FusedMultiplyAdd(v, wa, a3); b3 = Avx512F.FusedMultiplyAdd(v, wb, b3); }
            if (rows > 4) { v = Vector512.Create(x4[i]); a4 = Avx512F.FusedMultiplyAdd(v, wa, a4); b4 = Avx512F.FusedMultiplyAdd(v, wb, b4); }
            if (rows > 5) { v = Vector512.Create(x5[i]); a5 = Avx512F.FusedMultiplyAdd(v, wa, a5); b5 = Avx512F.FusedMultiplyAdd(v, wb, b5); }
        }
        a0.Store(y0); b0.Store(y0 + 16);
        if (rows > 1) { a1.Store(y1); b1.Store(y1 + 16); }
        if (rows > 2) { a2.Store(y2); b2.Store(y2 + 16); }
        if (rows > 3) { a3.Store(y3); b3.Store(y3 + 16); }
        if (rows > 4) { a4.Store(y4); b4.Store(y4 + 16); }
        if (rows > 5) { a5.Store(y5); b5.Store(y5 + 16); }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Start256(bool accumulate, float* y) => accumulate ? Vector256.Load(y) : Vector256<float>.Zero;

    /// <summary>TRows.Count input rows x 16 outputs of a panel (<paramref name="panel"/> points at the half; its rows
    /// stay 32 floats apart) on AVX2: the AVX-512 path's fused multiply-adds, eight lanes at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile256<TRows, TFetch>(float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate) where TRows : struct, IRows where TFetch : struct, IFetch
    {
        int rows = TRows.Count;
        float* x0 = x, x1 = x + (rows > 1 ? xs : 0), x2 = x + (rows > 2 ? 2 * xs : 0);
        float* x3 = x + (rows > 3 ? 3 * xs : 0), x4 = x + (rows > 4 ? 4 * xs : 0), x5 = x + (rows > 5 ? 5 * xs : 0);
        float* y0 = y, y1 = y + (rows > 1 ? ys : 0), y2 = y + (rows > 2 ? 2 * ys : 0);
        float* y3 = y + (rows > 3 ? 3 * ys : 0), y4 = y + (rows > 4 ? 4 * ys : 0), y5 = y + (rows > 5 ? 5 * ys : 0);
        var a0 = Start256(accumulate, y0); var b0 = Start256(accumulate, y0 + 8);
        var a1 = rows > 1 ? Start256(accumulate, y1) : default; var b1 = rows > 1 ? Start256(accumulate, y1 + 8) : default;
        var a2 = rows > 2 ? Start256(accumulate, y2) : default; var b2 = rows > 2 ? Start256(accumulate, y2 + 8) : default;
        var a3 = rows > 3 ? Start256(accumulate, y3) : default; var b3 = rows > 3 ? Start256(accumulate, y3 + 8) : default;
        var a4 = rows > 4 ? Start256(accumulate, y4) : default; var b4 = rows > 4 ? Start256(accumulate, y4 + 8) : default;
        var a5 = rows > 5 ? Start256(accumulate, y5) : default; var b5 = rows > 5 ? Start256(accumulate, y5 + 8) : default;
        float* w = panel;
        for (int i = 0; i < kc; i++, w += Panel)
        {
            if (TFetch.Prefetches) Sse.Prefetch0(w + PrefetchFloats);   // this half's line of the panel row
            var wa = Avx.LoadVector256(w);
            var wb = Avx.LoadVector256(w + 8);
            var v = Vector256.Create(x0[i]);
            a0 = Fma.MultiplyAdd(v, wa, a0); b0 = Fma.MultiplyAdd(v, wb, b0);
            if (rows > 1) { v = Vector256.Create(x1[i]); a1 = Fma.MultiplyAdd(v, wa, a1); b1 = Fma.MultiplyAdd(v, wb, b1); }
            if (rows > 2) { v = Vector256.Create(x2[i]); a2 = Fma.MultiplyAdd(v, wa, a2); b2 = Fma.MultiplyAdd(v, wb, b2); }
            if (rows > 3) { v = Vector256.Create(x3[i]); a3 = Fma.MultiplyAdd(v, wa, a3); b3 = Fma.MultiplyAdd(v, wb, b3); }
            if (rows > 4) { v = Vector256.Create(x4[i]); a4 = Fma.MultiplyAdd(v, wa, a4); b4 = Fma.MultiplyAdd(v, wb, b4); }
            if (rows > 5) { v = Vector256.Create(x5[i]); a5 = Fma.MultiplyAdd(v, wa, a5); b5 = Fma.MultiplyAdd(v, wb, b5); }
        }
        a0.Store(y0); b0.Store(y0 + 8);
        if (rows > 1) { a1.Store(y1); b1.Store(y1 + 8); }
        if (rows > 2) { a2.Store(y2); b2.Store(y2 + 8); }
        if (rows > 3) { a3.Store(y3); b3.Store(y3 + 8); }
        if (rows > 4) { a4.Store(y4); b4.Store(y4 + 8); }
        if (rows > 5) { a5.Store(y5); b5.Store(y5 + 8); }
    }

    /// <summary>The vector paths' arithmetic element by element, for CPUs without AVX2: the same bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ScalarTile(int rows, float* x, long xs, float* panel, int kc, float* y, long ys, bool accumulate)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < Panel; c++)
            {
                float sum = accumulate ? y[r * ys + c] : 0f;
                for (int i = 0; i < kc; i++) sum = MathF.FusedMultiplyAdd(x[r * xs + i], panel[i * Panel + c], sum);
                y[r * ys + c] = sum;
            }
    }
}
