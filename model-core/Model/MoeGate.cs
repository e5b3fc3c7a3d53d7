using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Model;

/// <summary>Per-token routing: expert ids [N, K] (descending weight) and their final weights [N, K].</summary>
public sealed record Routing(int Tokens, int TopK, int[] ExpertIds, float[] Weights)
{
    public int Expert(int token, int k) => ExpertIds[token * TopK + k];
    public float Weight(int token, int k) => Weights[token * TopK + k];
}

/// <summary>
/// Device-limited routing (DeepSeek-V2 §2.2.2): the routed experts are split into <see cref="Groups"/>
/// contiguous device groups and each token may reach at most <see cref="MaxGroups"/> of them, chosen by
/// their best expert affinity, before the top-K selection.
/// </summary>
public sealed record DeviceLimit(int Groups, int MaxGroups);

/// <summary>
/// The DeepSeekMoE gate: softmax affinities over the routed experts, then top-K selection (greedy, or
/// group-limited: only the topk_group groups with the best single affinity compete), then either
/// normalisation of the K weights (norm_topk_prob) or scaling by routed_scaling_factor.
/// </summary>
public sealed class MoeGate : IDisposable
{
    readonly ModelConfig _c;
    readonly LinearWeight _weight;   // [E, d], float32
    readonly Scalar _routedScaling, _tiny;   // owned for the gate's lifetime (see Scalars)

    public long Bytes => _weight.Bytes;

    readonly bool _routeInCSharp;

    /// <param name="rowKernels">with <paramref name="useKernels"/>: greedy routing runs in C# (<see cref="RouteOnRows"/>)</param>
    public MoeGate(Tensor weight, ModelConfig config, bool useKernels = true, bool rowKernels = true)
    {
        _routeInCSharp = useKernels && rowKernels;
        _c = config;
        _routedScaling = config.RoutedScalingFactor.ToScalar();
        _tiny = 1e-20.ToScalar();
        Tensor float32;
        using (NewDisposeScope()) float32 = weight.to(ScalarType.Float32).DetachFromDisposeScope();
        if (!ReferenceEquals(float32, weight)) weight.Dispose();
        // Through the batch-invariant GEMM by default: a token's routing does not depend on the rest of its batch.
        _weight = LinearWeight.Create(float32, WeightQuantization.None, useKernels);
    }

    /// <summary>Affinities s_{i,t} = softmax(u_t^T e_i) in float32: x [N, d] -> [N, E].</summary>
    public Tensor Scores(Tensor x) => softmax(_weight.Forward(x.to(ScalarType.Float32)), -1);

    public Routing Route(Tensor x, DeviceLimit? limit = null)
    {
        using var scope = NewDisposeScope();
        bool unlimited = limit is not { } dl || dl.MaxGroups >= dl.Groups;
        if (_routeInCSharp && _c.TopkMethod != "group_limited_greedy" && unlimited)
            return RouteOnRows(_weight.Forward(x.to(ScalarType.Float32)));
        var scores = Scores(x);
        long n = scores.shape[0], e = scores.shape[1];
        var candidates = scores;
        if (_c.TopkMethod == "group_limited_greedy")
            candidates = KeepBestGroups(candidates, _c.NGroup, _c.TopkGroup);
        if (limit is { } l && l.MaxGroups < l.Groups)
            candidates = KeepBestGroups(candidates, l.Groups, l.MaxGroups);
        var (weights, ids) = candidates.topk(_c.NumExpertsPerTok, dim: -1, largest: true, sorted: true);
        if (_c.NumExpertsPerTok > 1 && _c.NormTopkProb)
            weights = weights / weights.sum(-1, keepdim: true).Add(_tiny);
        else
            weights = weights.mul(_routedScaling);
        return new Routing((int)n, _c.NumExpertsPerTok,
            ids.to(ScalarType.Int32).data<int>().ToArray(),
            weights.to(ScalarType.Float32).data<float>().ToArray());
    }

    /// <summary>
    /// Greedy top-K over the gate's logits [N, E] in C#, row by row: the softmax affinities (max subtracted, float32), the K
    /// largest in descending order (the lower expert id first on a tie), then normalised (norm_topk_prob) or scaled by
    /// routed_scaling_factor, as <see cref="Route"/>'s libtorch form computes them; one pass instead of ~8 libtorch calls.
    /// </summary>
    unsafe Routing RouteOnRows(Tensor logits)
    {
        var rows = logits.contiguous();
        int n = (int)rows.shape[0], e = (int)rows.shape[1], k = _c.NumExpertsPerTok;
        var ids = new int[n * k];
        var weights = new float[n * k];
        var affinity = new float[e];
        bool normalise = k > 1 && _c.NormTopkProb;
        float scaling = (float)_c.RoutedScalingFactor;
        float* l = Kernels.TensorMemory.Pointer<float>(rows);
        for (int t = 0; t < n; t++)
        {
            float* row = l + (long)t * e;
            float max = float.NegativeInfinity;
            for (int i = 0; i < e; i++) max = Math.Max(max, row[i]);
            float sum = 0;
            for (int i = 0; i < e; i++) sum += affinity[i] = MathF.Exp(row[i] - max);
            for (int i = 0; i < e; i++) affinity[i] /= sum;
            float chosen = 0;
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int i = 0; i < e; i++)
                    if (!float.IsNegativeInfinity(affinity[i]) && (best < 0 || affinity[i] > affinity[best])) best = i;
                ids[t * k + j] = best;
                weights[t * k + j] = affinity[best];
                chosen += affinity[best];
                affinity[best] = float.NegativeInfinity;
            }
            for (int j = 0; j < k; j++)
                weights[t * k + j] = normalise ? weights[t * k + j] / (chosen + 1e-20f) : weights[t * k + j] * scaling;
        }
        return new Routing(n, k, ids, weights);
    }

    /// <summary>Zeroes the affinities outside the <paramref name="keep"/> groups whose best expert scores highest.</summary>
    static Tensor KeepBestGroups(Tensor scores, int groups, int keep)
    {
        long n = scores.shape[0], e = scores.shape[1];
        var groupScores = scores.view(n, groups, e / groups).amax([-1L]);         // [N, groups]
        var best = groupScores.topk(keep, dim: -1, largest: true, sorted: false).indexes;
        var groupMask = zeros_like(groupScores).scatter_(1, best, ones_like(best, dtype: groupScores.dtype));
        var expertMask = groupMask.unsqueeze(-1).expand(n, groups, e / groups).reshape(n, e);
        return scores.masked_fill(expertMask.eq(Scalars.Zero), Scalars.ZeroFloat);
    }

    public void Dispose()
    {
        _weight.Dispose();
        _routedScaling.Dispose();
        _tiny.Dispose();
    }
}
