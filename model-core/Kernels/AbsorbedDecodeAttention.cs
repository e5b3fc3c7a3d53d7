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
/// are read where they lie (a latent-cache pool and each position's row number) and packed once per sequence (per
/// group of heads), 256 positions at a time, so a worker's scratch grows with the context only by the heads' scores.
/// </summary>
public static unsafe class AbsorbedDecodeAttention
{
    const int Panel = PackedWeight.PanelWidth;
    const int TileRows = InvariantGemm.TileRows;
    const int KeyBlock = InvariantGemm.BlockK;

    [ThreadStatic] static float[]? t_latents;   // the calling thread's latent queries and outputs
    [ThreadStatic] static float[]? t_scratch;   // a worker's packed rows, scores and output tile

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
            // 2. Per sequence (and group of heads when the batch is smaller than the cores): scores, softmax, values.
            // (Each group packs the sequence's rows again, so a batch as large as the cores keeps every sequence whole.)
            int groups = Math.Clamp((KernelParallel.Threads + batch - 1) / batch, 1, heads);
            int groupHeads = (heads + groups - 1) / groups;
            groups = (heads + groupHeads - 1) / groupHeads;
            KernelParallel.For(batch * groups, item =>
            {
                int b = item / groups, h0 = item % groups * groupHeads;
                Sequence(path, pool, rows, (long)b * tmax, lengths[b], qL + (long)b * heads * latent, oL + (long)b * heads * kvr,
                    h0, Math.Min(heads, h0 + groupHeads), kvr, rope, scale);
            });
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

    /// <summary>Heads [h0, h1) of one sequence of <paramref name="length"/> positions (row numbers at rows[first..]), its
    /// cached rows taken in blocks of <see cref="KeyBlock"/> positions so the scratch does not grow with the context:
    /// per block the rows packed as Kᵀ panels [block/32][kvr+rope][32] and every head's scores against them; each head's
    /// softmax over all positions; per block the c_KV rows packed as value panels [kvr/32][block][32] and every head's
    /// weighted sum continued (one fma chain over the positions in increasing order); the sums divided out into o_latent.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Sequence(GemmPath path, float* pool, long[] rows, long first, int length, float* qLatent, float* oLatent, int h0, int h1,
        int kvr, int rope, float scale)
    {
        int latent = kvr + rope, heads = h1 - h0;
        int tPad = (length + Panel - 1) / Panel * Panel;
        int valuePanels = (kvr + Panel - 1) / Panel, vPad = valuePanels * Panel;
        long blockFloats = Math.Max((long)KeyBlock * latent, (long)valuePanels * KeyBlock * Panel);
        long need = blockFloats + (long)heads * tPad + (long)heads * vPad + heads;
        var scratch = t_scratch is { } s && s.LongLength >= need ? s : t_scratch = GC.AllocateUninitializedArray<float>((int)Math.Max(need, 1 << 16), pinned: true);
        fixed (float* scratchBase = scratch)
        fixed (long* rowBase = rows)
        {
            float* block = scratchBase, scores = block + blockFloats, sums = scores + (long)heads * tPad, tile = sums + heads;
            long* at = rowBase + first;
            // Scores: [heads, tPad], a block of key panels at a time.
            for (int k0 = 0; k0 < length; k0 += KeyBlock)
            {
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
                for (int h = 0; h < heads; h += TileRows)
                {
                    int count = Math.Min(TileRows, heads - h);
                    for (int kp = 0; kp < keyPanels; kp++)
                        InvariantGemm.Tile(path, count, qLatent + (long)(h0 + h) * latent, latent, block + (long)kp * latent * Panel, latent,
                            scores + (long)h * tPad + k0 + kp * Panel, tPad, false);
                }
            }
            for (int h = 0; h < heads; h++)
                sums[h] = PrefillAttention.Softmax(scores + (long)h * tPad, length, length, scale, path);
            // Values: tile [heads, vPad] += weights [heads, block] x c_KV rows [block, kvr], a block at a time.
            for (int k0 = 0; k0 < length; k0 += KeyBlock)
            {
                int kc = Math.Min(KeyBlock, length - k0);
                for (int t = 0; t < kc; t++)
                {
                    float* src = pool + at[k0 + t] * latent;
                    for (int vp = 0; vp < valuePanels; vp++)
                    {
                        float* dst = block + ((long)vp * kc + t) * Panel;
                        int width = Math.Min(Panel, kvr - vp * Panel);
                        new ReadOnlySpan<float>(src + vp * Panel, width).CopyTo(new Span<float>(dst, width));
                        for (int c = width; c < Panel; c++) dst[c] = 0f;
                    }
                }
                for (int h = 0; h < heads; h += TileRows)
                {
                    int count = Math.Min(TileRows, heads - h);
                    for (int vp = 0; vp < valuePanels; vp++)
                        InvariantGemm.Tile(path, count, scores + (long)h * tPad + k0, tPad, block + (long)vp * kc * Panel, kc,
                            tile + (long)h * vPad + vp * Panel, vPad, k0 > 0);
                }
            }
            for (int h = 0; h < heads; h++)
            {
                float* o = oLatent + (long)(h0 + h) * kvr;
                float sum = sums[h];
                for (int c = 0; c < kvr; c++) o[c] = tile[(long)h * vPad + c] / sum;
            }
        }
    }
}
