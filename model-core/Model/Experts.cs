using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>A contiguous range of routed experts [First, First + Count): one expert group.</summary>
public readonly record struct ExpertRange(int First, int Count)
{
    public int End => First + Count;
    public bool Contains(int expert) => expert >= First && expert < End;
    public override string ToString() => $"{First}..{End - 1}";

    /// <summary>Splits n experts into <paramref name="groups"/> contiguous groups of equal size.</summary>
    public static ExpertRange[] Partition(int experts, int groups)
    {
        if (groups < 1 || experts % groups != 0)
            throw new ArgumentException($"expert groups: {groups} must divide the {experts} routed experts");
        int size = experts / groups;
        return Enumerable.Range(0, groups).Select(g => new ExpertRange(g * size, size)).ToArray();
    }
}

/// <summary>
/// The routed experts of one expert group for every MoE layer. Given tokens and their routing, it runs
/// each routed expert of the group once over all tokens that chose it and returns the weighted sum
/// of their outputs, the group's share of the MoE output.
/// </summary>
public sealed class Experts : IDisposable
{
    readonly Dictionary<int, SwiGluMlp[]> _byLayer = new();   // layer -> experts of the range

    public ExpertRange Range { get; }

    public Experts(WeightLoader w, ExpertRange range)
    {
        Range = range;
        try
        {
            foreach (var layer in w.Config.MoeLayers)
            {
                var experts = new SwiGluMlp[range.Count];
                _byLayer[layer] = experts;
                for (int i = 0; i < range.Count; i++)
                    experts[i] = SwiGluMlp.Load(w, TensorNames.Expert(layer, range.First + i));
            }
        }
        catch
        {
            Dispose();   // a failed load (missing tensor, bad shape) frees what it had loaded
            throw;
        }
    }

    /// <summary>
    /// x [N, d] with <paramref name="routing"/> for the same N tokens -> [N, d]: sum over the (token, k)
    /// pairs routed into this group of weight * expert(x[token]). Tokens routed elsewhere get zeros.
    /// </summary>
    public Tensor Forward(int layer, Tensor x, Routing routing)
    {
        if (!_byLayer.TryGetValue(layer, out var experts))
            throw new ArgumentException($"layer {layer} is not a MoE layer");
        var output = zeros_like(x);
        // Bucket the (token, weight) pairs by expert on the CPU side: one gather/compute/scatter per active expert.
        var tokens = new List<long>[Range.Count];
        var weights = new List<float>[Range.Count];
        for (int t = 0; t < routing.Tokens; t++)
            for (int k = 0; k < routing.TopK; k++)
            {
                int e = routing.Expert(t, k);
                if (!Range.Contains(e)) continue;
                int local = e - Range.First;
                (tokens[local] ??= new()).Add(t);
                (weights[local] ??= new()).Add(routing.Weight(t, k));
            }
        // Every expert the kernels take (float32 or 8-bit weights, any token count) runs in one parallel call over all
        // of them; the rest (libtorch-only loads, other dtypes) as one
        // libtorch gather/matmul/scatter each.
        bool kernels = x.dtype == ScalarType.Float32;
        var small = new List<ExpertWork>();
        for (int local = 0; local < Range.Count; local++)
        {
            if (tokens[local] is not { } rows) continue;
            var expert = experts[local];
            if (kernels && expert.GateUp.KernelsTake(rows.Count) && expert.Down.KernelsTake(rows.Count))
            {
                small.Add(new ExpertWork(expert.GateUp, expert.Down, rows, weights[local]));
                continue;
            }
            var index = tensor(rows.ToArray(), ScalarType.Int64);
            var gathered = x.index_select(0, index);                                 // [n_e, d]
            var scale = tensor(weights[local].ToArray(), [rows.Count, 1]);            // [n_e, 1]
            if (x.dtype != ScalarType.Float32) scale = scale.to(x.dtype);
            output.index_add_(0, index, expert.Forward(gathered) * scale, Scalars.One);
        }
        if (small.Count > 0)
        {
            var input = x.contiguous();
            unsafe { GroupedExperts.Run(small, TensorMemory.Pointer<float>(input), (int)x.shape[1], TensorMemory.Pointer<float>(output)); }
        }
        return output;
    }

    /// <summary>Routed expert <paramref name="expert"/> (a global index inside <see cref="Range"/>) of MoE layer <paramref name="layer"/>.</summary>
    public SwiGluMlp Expert(int layer, int expert) =>
        _byLayer.TryGetValue(layer, out var experts) && Range.Contains(expert) ? experts[expert - Range.First]
            : throw new ArgumentException($"expert {expert} of layer {layer} is not in this group ({Range})");

    /// <summary>Bytes of the group's expert weights.</summary>
    public long Bytes => _byLayer.Values.SelectMany(e => e).Sum(e => e.Bytes);

    public void Dispose()
    {
        foreach (var experts in _byLayer.Values)
            foreach (var e in experts) e?.Dispose();
    }
}
