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

    public MoeGate(Tensor weight, ModelConfig config, bool useKernels = true)
    {
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
