using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Grid.ModelCore.Kernels;

/// <summary>One routed expert's share of a MoE layer: its SwiGLU weights and the (token, routing weight) pairs it got.</summary>
public sealed record ExpertWork(LinearWeight GateUp, LinearWeight Down, List<long> Tokens, List<float> Weights);

/// <summary>
/// All active experts of a group in two kernel calls: every expert's gate+up projection of its tokens at once (one
/// <see cref="InvariantGemm.Run(MatmulJob[], int)"/> over float32 weights, any batch, or
/// <see cref="QuantizedGemm.Run(MatmulJob[], int)"/> over 8-bit ones, any batch too; split over the cores), SiLU(gate) * up, then every expert's down projection at once, and the routing-weighted sum into
/// the output rows. Plain memory only; the caller (inference thread) owns the tensors behind the pointers.
/// </summary>
public static unsafe class GroupedExperts
{
    [ThreadStatic] static float[]? t_arena;

    /// <summary>Float32 jobs through the batch-invariant GEMM, a call with 8-bit ones through the 8-bit GEMM (both blocked over input rows too).</summary>
    static void RunJobs(MatmulJob[] jobs, int count)
    {
        bool float32 = true;
        for (int j = 0; j < count; j++) float32 &= jobs[j].Quantized is null;
        if (float32) InvariantGemm.Run(jobs, count);
        else QuantizedGemm.Run(jobs, count);
    }

    /// <summary>
    /// For every expert in <paramref name="work"/>: output[token] += weight * down(silu(gate(x[token])) * up(x[token])),
    /// x [N, d] and output [N, d] float32, row-major.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(IReadOnlyList<ExpertWork> work, float* x, int d, float* output)
    {
        if (work.Count == 0) return;
        long inputs = 0, hidden = 0, acts = 0;
        foreach (var w in work)
        {
            int n = w.Tokens.Count, inter = w.Down.Cols;
            if (w.GateUp.Cols != d || w.Down.Rows != d || w.GateUp.Rows != 2 * inter) throw new ArgumentException("expert weights do not match the hidden size");
            if (inter != work[0].Down.Cols) throw new ArgumentException("the experts of one call need one intermediate size");
            inputs += (long)n * d;
            hidden += (long)n * 2 * inter;
            acts += (long)n * inter;
        }
        long total = 2 * inputs + hidden + acts;
        var arena = t_arena is { } a && a.Length >= total ? a : t_arena = GC.AllocateUninitializedArray<float>((int)Math.Max(total, 1 << 16), pinned: true);
        fixed (float* basePtr = arena)
        {
            float* xs = basePtr, hs = xs + inputs, actsPtr = hs + hidden, outs = actsPtr + acts;
            var gateUpJobs = new MatmulJob[work.Count];
            var downJobs = new MatmulJob[work.Count];
            float* xe = xs, he = hs, ae = actsPtr, oe = outs;
            for (int e = 0; e < work.Count; e++)
            {
                var w = work[e];
                int n = w.Tokens.Count, inter = w.Down.Cols;
                for (int t = 0; t < n; t++)
                    Buffer.MemoryCopy(x + w.Tokens[t] * d, xe + (long)t * d, d * sizeof(float), d * sizeof(float));
                gateUpJobs[e] = w.GateUp.Job(xe, n, he, 2 * inter);
                downJobs[e] = w.Down.Job(ae, n, oe, d);
                xe += (long)n * d;
                he += (long)n * 2 * inter;
                ae += (long)n * inter;
                oe += (long)n * d;
            }
            RunJobs(gateUpJobs, work.Count);
            // The experts' gate/up rows lie one after another, [rows of all experts, 2 * inter], and so do their activations.
            RowKernels.SiluTimesUp(hs, work[0].Down.Cols, actsPtr, (int)(acts / work[0].Down.Cols));
            RunJobs(downJobs, work.Count);
            oe = outs;
            foreach (var w in work)
            {
                for (int t = 0; t < w.Tokens.Count; t++)
                    RowKernels.Axpy(w.Weights[t], oe + (long)t * d, output + w.Tokens[t] * d, d);
                oe += (long)w.Tokens.Count * d;
            }
        }
    }
}
