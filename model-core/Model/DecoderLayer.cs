using Grid.ModelCore.Config;
using Grid.ModelCore.Weights;

namespace Grid.ModelCore.Model;

/// <summary>
/// The attention-host part of one decoder layer: input RMSNorm and MLA, post-attention RMSNorm, and
/// either the dense MLP or the MoE gate with its shared experts. Routed experts live in <see cref="Experts"/>.
/// </summary>
public sealed class DecoderLayer : IDisposable
{
    public int Index { get; }
    public RmsNorm InputNorm { get; }
    public MlaAttention Attention { get; }
    public RmsNorm PostAttentionNorm { get; }
    public SwiGluMlp? DenseMlp { get; }
    public MoeGate? Gate { get; }
    public SwiGluMlp? SharedExperts { get; }

    public bool IsMoe => Gate is not null;

    /// <summary>Bytes of its weights, as stored.</summary>
    public long Bytes => InputNorm.Bytes + Attention.Bytes + PostAttentionNorm.Bytes + (DenseMlp?.Bytes ?? 0) + (Gate?.Bytes ?? 0) + (SharedExperts?.Bytes ?? 0);

    public DecoderLayer(WeightLoader w, int index, double softmaxScale)
    {
        var c = w.Config;
        var p = TensorNames.Layer(index);
        Index = index;
        InputNorm = new RmsNorm(w.Get($"{p}.input_layernorm.weight"), c.RmsNormEps, w.DecodeKernels);
        Attention = new MlaAttention(w, index, softmaxScale);
        PostAttentionNorm = new RmsNorm(w.Get($"{p}.post_attention_layernorm.weight"), c.RmsNormEps, w.DecodeKernels);
        if (c.IsMoeLayer(index))
        {
            Gate = new MoeGate(w.Get($"{p}.mlp.gate.weight"), c, w.Kernels, w.RowKernels);
            if (c.NSharedExperts > 0) SharedExperts = SwiGluMlp.Load(w, $"{p}.mlp.shared_experts");
        }
        else
        {
            DenseMlp = SwiGluMlp.Load(w, $"{p}.mlp");
        }
    }

    public void Dispose()
    {
        InputNorm.Dispose();
        Attention.Dispose();
        PostAttentionNorm.Dispose();
        DenseMlp?.Dispose();
        Gate?.Dispose();
        SharedExperts?.Dispose();
    }
}
