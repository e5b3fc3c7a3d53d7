using System.Runtime.CompilerServices;
namespace Grid.ModelCore.Kernels;

/// <summary>
/// Absorbed MLA decode attention (DeepSeek-V2 §2.1, W_UK folded into the query, W_UV into the output) over plain
/// memory, one query per sequence: for every sequence b and head h,
/// q_latent = q_nope W_UK[h]; s_t = scale · [q_latent | q_R] · [c_KV,t | k_R,t] for t &lt; length_b;
/// p = softmax(s) (float32, max subtracted); o_latent = Σ_t p_t c_KV,t; out = o_latent W_UV[h].
/// The cached rows are read where they lie (a latent-cache pool and each position's row number), nothing gathered.
/// Each (sequence, head) is computed alone in one fixed order over its own positions only, so a sequence's result is
/// the same bits alone or in any batch, padded or not. Work items are heads (each head's W_UK and W_UV slices stay in
/// cache across the batch), spread over the cores.
/// </summary>
public static unsafe class AbsorbedDecodeAttention
{
    [ThreadStatic] static float[]? t_scratch;

    /// <param name="qNope">[B, H, nope]</param>
    /// <param name="qRope">[B, H, rope], rotated</param>
    /// <param name="pool">cached [c_KV | k_R] rows of kvr + rope floats each</param>
    /// <param name="rows">[B * tmax] row numbers in <paramref name="pool"/>: sequence b's position t at b * tmax + t</param>
    /// <param name="lengths">[B] cached positions per sequence (1..tmax)</param>
    /// <param name="wUK">[H, nope, kvr]</param>
    /// <param name="wUVt">[H, kvr, v]</param>
    /// <param name="output">[B, H*v]</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* qNope, float* qRope, float* pool, long[] rows, int[] lengths, int tmax, float* wUK, float* wUVt,
        int heads, int nope, int rope, int kvr, int v, float scale, float* output)
    {
        int batch = lengths.Length, latent = kvr + rope;
        if (rows.Length < (long)batch * tmax) throw new ArgumentException("rows needs tmax entries per sequence", nameof(rows));
        foreach (var length in lengths)
            if (length < 1 || length > tmax) throw new ArgumentException("every sequence needs 1..tmax cached positions", nameof(lengths));
        KernelParallel.For(heads, h =>
        {
            int need = latent + kvr + tmax;
            var scratch = t_scratch is { } s && s.Length >= need ? s : t_scratch = GC.AllocateUninitializedArray<float>(Math.Max(need, 4096), pinned: true);
            fixed (float* basePtr = scratch)
            fixed (long* rowBase = rows)
            {
                float* q = basePtr, outLatent = q + latent, scores = outLatent + kvr;
                float* uk = wUK + (long)h * nope * kvr, uv = wUVt + (long)h * kvr * v;
                for (int b = 0; b < batch; b++)
                {
                    float* qn = qNope + ((long)b * heads + h) * nope, qr = qRope + ((long)b * heads + h) * rope;
                    // q_latent[j] = Σ_i q_nope[i] W_UK[h, i, j], in increasing i; then q_R beside it.
                    new Span<float>(q, kvr).Clear();
                    for (int i = 0; i < nope; i++) RowKernels.Axpy(qn[i], uk + (long)i * kvr, q, kvr);
                    for (int i = 0; i < rope; i++) q[kvr + i] = qr[i];
                    int length = lengths[b];
                    long* at = rowBase + (long)b * tmax;
                    float max = float.NegativeInfinity;
                    for (int t = 0; t < length; t++)
                    {
                        float st = RowKernels.Dot(q, pool + at[t] * latent, latent) * scale;
                        scores[t] = st;
                        if (st > max) max = st;
                    }
                    float sum = 0;
                    for (int t = 0; t < length; t++)
                    {
                        float e = MathF.Exp(scores[t] - max);
                        scores[t] = e;
                        sum += e;
                    }
                    float inverse = 1f / sum;
                    new Span<float>(outLatent, kvr).Clear();
                    for (int t = 0; t < length; t++) RowKernels.Axpy(scores[t] * inverse, pool + at[t] * latent, outLatent, kvr);
                    // out[k] = Σ_j o_latent[j] W_UV[h, j, k], in increasing j.
                    float* o = output + (long)b * heads * v + (long)h * v;
                    new Span<float>(o, v).Clear();
                    for (int j = 0; j < kvr; j++) RowKernels.Axpy(outLatent[j], uv + (long)j * v, o, v);
                }
            }
        });
    }
}
