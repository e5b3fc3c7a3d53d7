using System.Runtime.CompilerServices;
namespace Grid.ModelCore.Kernels;

/// <summary>
/// The absorbed factors of one layer's kv_b_proj, packed for <see cref="InvariantGemm"/>'s micro-kernel, one
/// <see cref="PackedWeight"/> per head, each as W in y = x Wᵀ: W_UK[h] as [kvr, nope] (q_latent = q_nope W_UK[h]) and
/// W_UV[h] as [v, kvr] (out = o_latent W_UV[h]). Native memory, read from any thread.
/// </summary>
public sealed unsafe class AbsorbedProjections : IDisposable
{
    readonly PackedWeight[] _uk, _uv;

    public int Heads => _uk.Length;
    public int Nope { get; }
    public int KvRank { get; }
    public int V { get; }
    public long Bytes => _uk.Sum(p => p.Bytes) + _uv.Sum(p => p.Bytes);

    /// <param name="wUK">[H, kvr, nope]: head h's W_UK, one row per latent column</param>
    /// <param name="wUV">[H, v, kvr]: head h's W_UV, one row per value column</param>
    public AbsorbedProjections(float* wUK, float* wUV, int heads, int nope, int kvr, int v)
    {
        if (heads < 1 || nope < 1 || kvr < 1 || v < 1) throw new ArgumentException("absorbed projections need a head and a column of each");
        Nope = nope;
        KvRank = kvr;
        V = v;
        _uk = new PackedWeight[heads];
        _uv = new PackedWeight[heads];
        for (int h = 0; h < heads; h++)
        {
            _uk[h] = PackedWeight.Pack(wUK + (long)h * kvr * nope, kvr, nope);
            _uv[h] = PackedWeight.Pack(wUV + (long)h * v * kvr, v, kvr);
        }
    }

    internal float* UK(int h) => _uk[h].Data;
    internal float* UV(int h) => _uv[h].Data;

    public void Dispose()
    {
        foreach (var p in _uk) p.Dispose();
        foreach (var p in _uv) p.Dispose();
    }
}

/// <summary>
/// Absorbed MLA decode attention (DeepSeek-V2 §2.1, W_UK folded into the query, W_UV into the output) over plain
/// memory, one query per sequence: for every sequence b and head h,
/// q_latent = q_nope W_UK[h]; s_t = scale · [q_latent | q_R] · [c_KV,t | k_R,t] for t &lt; length_b;
/// e_t = exp(s_t − max s); out = (Σ_t e_t c_KV,t / Σ_t e_t) W_UV[h].
/// The absorbed latent cache is one key and value row per position shared by all heads (multi-query attention over
/// the latent), so every product here is a small GEMM on <see cref="InvariantGemm"/>'s micro-kernel:
/// <list type="number">
/// <item>per head, the batch's queries times W_UK[h] ([B, nope] x [nope, kvr]);</item>
/// <item>per sequence, its heads' latent queries times its cached rows packed as Kᵀ panels ([H, kvr+rope] x [kvr+rope, T]),
/// the softmax (<see cref="PrefillAttention"/>'s, one fixed exp), and the weights times its c_KV rows packed as value
/// panels ([H, T] x [T, kvr]), divided by each head's sum;</item>
/// <item>per head, the batch's latent outputs times W_UV[h] ([B, kvr] x [kvr, v]).</item>
/// </list>
/// Every output element is one fused multiply-add chain in increasing order whatever the tile, so a sequence's result
/// is the same bits alone or in any batch, padded or not, and on the AVX-512, AVX2 and scalar paths. The cached rows
/// are read where they lie (a latent-cache pool and each position's row number) and packed once per sequence, 256
/// positions at a time, so a worker's scratch grows with the context only by the heads' scores. A batch as large as the
/// cores runs a sequence per work item; a smaller one spreads each sequence over the cores: its key blocks, heads and
/// value panels in three passes (the same chains), or for one key block its heads in a group per core.
/// </summary>
public static unsafe class AbsorbedDecodeAttention
{
    const int Panel = PackedWeight.PanelWidth;
    const int TileRows = InvariantGemm.TileRows;
    const int KeyBlock = InvariantGemm.BlockK;

    [ThreadStatic] static float[]? t_latents;   // the calling thread's latent queries and outputs
    [ThreadStatic] static float[]? t_scratch;   // a worker's packed rows (and, for a whole sequence, its scores and output tile)
    [ThreadStatic] static float[]? t_shared;    // the calling thread's scores and output tile of a sequence split over the cores

    /// <param name="qNope">[B, H, nope]</param>
    /// <param name="qRope">[B, H, rope], rotated</param>
    /// <param name="pool">cached [c_KV | k_R] rows of kvr + rope floats each</param>
    /// <param name="rows">[B * tmax] row numbers in <paramref name="pool"/>: sequence b's position t at b * tmax + t</param>
    /// <param name="lengths">[B] cached positions per sequence (1..tmax)</param>
    /// <param name="projections">W_UK and W_UV packed per head</param>
    /// <param name="output">[B, H*v]</param>
    public static void Run(float* qNope, float* qRope, float* pool, long[] rows, int[] lengths, int tmax, AbsorbedProjections projections,
        int heads, int rope, float scale, float* output) =>
        Run(qNope, qRope, pool, rows, lengths, tmax, projections, heads, rope, scale, output, InvariantGemm.BestPath);

    /// <summary>As the other overload, through <paramref name="path"/> (which the CPU must support).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* qNope, float* qRope, float* pool, long[] rows, int[] lengths, int tmax, AbsorbedProjections projections,
        int heads, int rope, float scale, float* output, GemmPath path)
    {
        int batch = lengths.Length, nope = projections.Nope, kvr = projections.KvRank, v = projections.V, latent = kvr + rope;
        if (projections.Heads != heads) throw new ArgumentException("the projections are packed for another head count", nameof(projections));
        if (rows.Length < (long)batch * tmax) throw new ArgumentException("rows needs tmax entries per sequence", nameof(rows));
        foreach (var length in lengths)
            if (length < 1 || length > tmax) throw new ArgumentException("every sequence needs 1..tmax cached positions", nameof(lengths));
        if (batch == 0) return;
        long queries = (long)batch * heads;
        long need = queries * latent + queries * kvr;
        var latents = t_latents is { } l && l.LongLength >= need ? l : t_latents = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 1 << 14), pinned: true);
        fixed (float* latentBase = latents)
        {
            float* qLatent = latentBase, oLatent = latentBase + queries * latent;   // [B, H, kvr + rope], [B, H, kvr]
            float* qL = qLatent, oL = oLatent;
            // 1. q_latent[b, h] = q_nope[b, h] W_UK[h] (a GEMM over the batch per head), q_R beside it.
            KernelParallel.For(heads, h =>
            {
                Project(path, batch, qNope + (long)h * nope, (long)heads * nope, projections.UK(h), nope, kvr, qL + (long)h * latent, (long)heads * latent);
                for (int b = 0; b < batch; b++)
                {
                    float* src = qRope + ((long)b * heads + h) * rope, dst = qL + ((long)b * heads + h) * latent + kvr;
                    for (int i = 0; i < rope; i++) dst[i] = src[i];
                }
            });
            // 2. Scores, softmax and values. A batch as large as the cores: a sequence per work item, whole. A smaller
            // batch, a sequence at a time: longer than one key block, in three parallel passes (key blocks, heads,
            // value panels) so its rows are packed once; shorter, its heads split into a group per core (each group
            // packs the rows, which is cheaper than three passes for one block).
            if (batch >= KernelParallel.Threads)
                KernelParallel.For(batch, b =>
                    Sequence(path, pool, rows, (long)b * tmax, lengths[b], qL + (long)b * heads * latent, oL + (long)b * heads * kvr,
                        heads, kvr, rope, scale));
            else
                for (int b = 0; b < batch; b++)
                {
                    long first = (long)b * tmax;
                    float* q = qL + (long)b * heads * latent, o = oL + (long)b * heads * kvr;
                    int length = lengths[b];
                    if (length > KeyBlock)
                    {
                        SequenceSplit(path, pool, rows, first, length, q, o, heads, kvr, rope, scale);
                        continue;
                    }
                    int groupHeads = (heads + KernelParallel.Threads - 1) / KernelParallel.Threads;
                    KernelParallel.For((heads + groupHeads - 1) / groupHeads, g =>
                    {
                        int h0 = g * groupHeads;
                        Sequence(path, pool, rows, first, length, q + (long)h0 * latent, o + (long)h0 * kvr, Math.Min(heads, h0 + groupHeads) - h0, kvr, rope, scale);
                    });
                }
            // 3. out[b, h] = o_latent[b, h] W_UV[h] (a GEMM over the batch per head).
            KernelParallel.For(heads, h =>
                Project(path, batch, oL + (long)h * kvr, (long)heads * kvr, projections.UV(h), kvr, v, output + (long)h * v, (long)heads * v));
        }
    }

    /// <summary>y[m, 0..n) = x[m, 0..k) Wᵀ for m &lt; <paramref name="m"/>, W packed in panels; a last panel cut by n goes through a scratch tile.</summary>
    static void Project(GemmPath path, int m, float* x, long xs, float* packed, int k, int n, float* y, long ys)
    {
        var scratch = stackalloc float[TileRows * Panel];
        for (int p = 0; p * Panel < n; p++)
        {
            float* panel = packed + (long)p * k * Panel;
            int width = Math.Min(Panel, n - p * Panel);
            for (int r0 = 0; r0 < m; r0 += TileRows)
            {
                int count = Math.Min(TileRows, m - r0);
                float* xr = x + r0 * xs, yr = y + r0 * ys + p * Panel;
                bool first = r0 == 0;   // reads the weight panel from memory; later tiles find it in cache
                if (width == Panel)
                    InvariantGemm.Tile(path, count, xr, xs, panel, k, yr, ys, false, first);
                else
                {
                    InvariantGemm.Tile(path, count, xr, xs, panel, k, scratch, Panel, false, first);
                    for (int r = 0; r < count; r++)
                        for (int c = 0; c < width; c++) yr[r * ys + c] = scratch[r * Panel + c];
                }
            }
        }
    }

    /// <summary>Every head of one sequence of <paramref name="length"/> positions (row numbers at rows[first..]) on this
    /// thread, its cached rows taken in blocks of <see cref="KeyBlock"/> positions so the scratch does not grow with the
    /// context: per block the rows packed as Kᵀ panels and every head's scores against them; each head's softmax over
    /// all positions; per block the c_KV rows packed as value panels and every head's weighted sum continued (one fma
    /// chain over the positions in increasing order); the sums divided out into o_latent.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Sequence(GemmPath path, float* pool, long[] rows, long first, int length, float* qLatent, float* oLatent,
        int heads, int kvr, int rope, float scale)
    {
        var shape = new Shape(heads, kvr, rope, length);
        var scratch = Scratch(ref t_scratch, shape.BlockFloats + shape.SharedFloats);
        fixed (float* scratchBase = scratch)
        fixed (long* rowBase = rows)
        {
            float* block = scratchBase, scores = block + shape.BlockFloats, sums = scores + (long)heads * shape.TPad, tile = sums + heads;
            long* at = rowBase + first;
            for (int k0 = 0; k0 < length; k0 += KeyBlock) ScoreBlock(path, pool, at, k0, shape, qLatent, block, scores);
            for (int h = 0; h < heads; h++)
                sums[h] = PrefillAttention.Softmax(scores + (long)h * shape.TPad, length, length, scale, path);
            for (int k0 = 0; k0 < length; k0 += KeyBlock) ValueBlock(path, pool, at, k0, shape, 0, shape.ValuePanels, block, scores, tile);
            DivideOut(shape, tile, sums, oLatent);
        }
    }

    /// <summary><see cref="Sequence"/>'s arithmetic for a batch smaller than the cores, spread over them without packing a
    /// row twice: the scores a key block per work item, the softmax a head per item, the values a value panel per item
    /// (its column of every block, in block order). Every output element gets the same chain as in <see cref="Sequence"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void SequenceSplit(GemmPath path, float* pool, long[] rows, long first, int length, float* qLatent, float* oLatent,
        int heads, int kvr, int rope, float scale)
    {
        var shape = new Shape(heads, kvr, rope, length);
        var shared = Scratch(ref t_shared, shape.SharedFloats);
        fixed (float* sharedBase = shared)
        fixed (long* rowBase = rows)
        {
            float* scores = sharedBase, sums = scores + (long)heads * shape.TPad, tile = sums + heads;
            long* at = rowBase + first;
            int blocks = (length + KeyBlock - 1) / KeyBlock;
            KernelParallel.For(blocks, i =>
            {
                fixed (float* block = Scratch(ref t_scratch, shape.BlockFloats))
                    ScoreBlock(path, pool, at, i * KeyBlock, shape, qLatent, block, scores);
            });
            KernelParallel.For(heads, h => sums[h] = PrefillAttention.Softmax(scores + (long)h * shape.TPad, length, length, scale, path));
            KernelParallel.For(shape.ValuePanels, vp =>
            {
                fixed (float* block = Scratch(ref t_scratch, shape.BlockFloats))
                    for (int k0 = 0; k0 < length; k0 += KeyBlock) ValueBlock(path, pool, at, k0, shape, vp, vp + 1, block, scores, tile);
            });
            DivideOut(shape, tile, sums, oLatent);
        }
    }

    /// <summary>One sequence's sizes: [heads, tPad] scores, [heads] sums and a [heads, vPad] output tile (shared by the
    /// passes), and a block scratch that holds one key block as Kᵀ panels or its value panels.</summary>
    readonly struct Shape
    {
        public readonly int Heads, KvRank, Latent, Length, TPad, ValuePanels, VPad;
        public readonly long BlockFloats, SharedFloats;

        public Shape(int heads, int kvr, int rope, int length)
        {
            Heads = heads;
            KvRank = kvr;
            Latent = kvr + rope;
            Length = length;
            TPad = (length + Panel - 1) / Panel * Panel;
            ValuePanels = (kvr + Panel - 1) / Panel;
            VPad = ValuePanels * Panel;
            BlockFloats = Math.Max((long)KeyBlock * Latent, (long)ValuePanels * KeyBlock * Panel);
            SharedFloats = (long)heads * TPad + heads + (long)heads * VPad;
        }
    }

    static float[] Scratch(ref float[]? buffer, long need) =>
        buffer is { } s && s.LongLength >= need ? s : buffer = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 1 << 16), pinned: true);

    /// <summary>Positions [k0, k0 + <see cref="KeyBlock"/>) packed as Kᵀ panels [block/32][kvr+rope][32] (zeros past the
    /// length), and every head's scores against them into scores[h, k0..].</summary>
    static void ScoreBlock(GemmPath path, float* pool, long* at, int k0, in Shape shape, float* qLatent, float* block, float* scores)
    {
        int latent = shape.Latent, length = shape.Length;
        int keyPanels = (Math.Min(KeyBlock, length - k0) + Panel - 1) / Panel;
        for (int kp = 0; kp < keyPanels; kp++)
            for (int j = 0; j < Panel; j++)
            {
                int t = k0 + kp * Panel + j;
                float* dst = block + (long)kp * latent * Panel + j;
                if (t < length)
                {
                    float* src = pool + at[t] * latent;
                    for (int d = 0; d < latent; d++) dst[d * Panel] = src[d];
                }
                else
                    for (int d = 0; d < latent; d++) dst[d * Panel] = 0f;
            }
        for (int h = 0; h < shape.Heads; h += TileRows)
        {
            int count = Math.Min(TileRows, shape.Heads - h);
            for (int kp = 0; kp < keyPanels; kp++)
                InvariantGemm.Tile(path, count, qLatent + (long)h * latent, latent, block + (long)kp * latent * Panel, latent,
                    scores + (long)h * shape.TPad + k0 + kp * Panel, shape.TPad, false);
        }
    }

    /// <summary>Value panels [vp0, vp1) of positions [k0, k0 + <see cref="KeyBlock"/>): the c_KV rows' columns packed as
    /// [vp1-vp0][block][32], then tile[h, panel] += weights[h, block] x the panel, continuing each output's chain.</summary>
    static void ValueBlock(GemmPath path, float* pool, long* at, int k0, in Shape shape, int vp0, int vp1, float* block, float* scores, float* tile)
    {
        int latent = shape.Latent, kvr = shape.KvRank;
        int kc = Math.Min(KeyBlock, shape.Length - k0);
        for (int t = 0; t < kc; t++)
        {
            float* src = pool + at[k0 + t] * latent;
            for (int vp = vp0; vp < vp1; vp++)
            {
                float* dst = block + ((long)(vp - vp0) * kc + t) * Panel;
                int width = Math.Min(Panel, kvr - vp * Panel);
                new ReadOnlySpan<float>(src + vp * Panel, width).CopyTo(new Span<float>(dst, width));
                for (int c = width; c < Panel; c++) dst[c] = 0f;
            }
        }
        for (int h = 0; h < shape.Heads; h += TileRows)
        {
            int count = Math.Min(TileRows, shape.Heads - h);
            for (int vp = vp0; vp < vp1; vp++)
                InvariantGemm.Tile(path, count, scores + (long)h * shape.TPad + k0, shape.TPad, block + (long)(vp - vp0) * kc * Panel, kc,
                    tile + (long)h * shape.VPad + vp * Panel, shape.VPad, k0 > 0);
        }
    }

    /// <summary>o_latent[h] = tile[h] / sum[h] for every head.</summary>
    static void DivideOut(in Shape shape, float* tile, float* sums, float* oLatent)
    {
        for (int h = 0; h < shape.Heads; h++)
        {
            float* o = oLatent + (long)h * shape.KvRank;
            float sum = sums[h];
            for (int c = 0; c < shape.KvRank; c++) o[c] = tile[(long)h * shape.VPad + c] / sum;
        }
    }
}
