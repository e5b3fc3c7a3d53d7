using Grid.ModelCore.Config;

namespace Grid.ModelCore.Weights;

/// <summary>Which part of the model a tensor belongs to: the attention/dense host, or one routed expert.</summary>
public readonly record struct TensorSpec(string Name, long[] Shape, int? Expert = null);

/// <summary>The Hugging Face tensor names and shapes of a DeepSeek-V2 checkpoint, derived from its config.</summary>
public static class TensorNames
{
    public static string Layer(int layer) => $"model.layers.{layer}";
    public static string Expert(int layer, int expert) => $"model.layers.{layer}.mlp.experts.{expert}";

    /// <summary>Every tensor of the model, in checkpoint order.</summary>
    public static IEnumerable<TensorSpec> All(ModelConfig c)
    {
        long d = c.HiddenSize, h = c.NumAttentionHeads;
        yield return new("model.embed_tokens.weight", [c.VocabSize, d]);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var p = Layer(i);
            yield return new($"{p}.input_layernorm.weight", [d]);
            if (c.QLoraRank is int qlr)
            {
                yield return new($"{p}.self_attn.q_a_proj.weight", [qlr, d]);
                if (c.AttentionBias) yield return new($"{p}.self_attn.q_a_proj.bias", [qlr]);
                yield return new($"{p}.self_attn.q_a_layernorm.weight", [qlr]);
                yield return new($"{p}.self_attn.q_b_proj.weight", [h * c.QHeadDim, qlr]);
            }
            else
            {
                yield return new($"{p}.self_attn.q_proj.weight", [h * c.QHeadDim, d]);
            }
            yield return new($"{p}.self_attn.kv_a_proj_with_mqa.weight", [c.LatentDim, d]);
            if (c.AttentionBias) yield return new($"{p}.self_attn.kv_a_proj_with_mqa.bias", [c.LatentDim]);
            yield return new($"{p}.self_attn.kv_a_layernorm.weight", [c.KvLoraRank]);
            yield return new($"{p}.self_attn.kv_b_proj.weight", [h * (c.QkNopeHeadDim + c.VHeadDim), c.KvLoraRank]);
            yield return new($"{p}.self_attn.o_proj.weight", [d, h * c.VHeadDim]);
            if (c.AttentionBias) yield return new($"{p}.self_attn.o_proj.bias", [d]);
            yield return new($"{p}.post_attention_layernorm.weight", [d]);
            if (!c.IsMoeLayer(i))
            {
                foreach (var t in Mlp($"{p}.mlp", d, c.IntermediateSize)) yield return t;
                continue;
            }
            yield return new($"{p}.mlp.gate.weight", [c.NRoutedExperts, d]);
            for (int e = 0; e < c.NRoutedExperts; e++)
                foreach (var t in Mlp(Expert(i, e), d, c.MoeIntermediateSize)) yield return t with { Expert = e };
            if (c.NSharedExperts > 0)
                foreach (var t in Mlp($"{p}.mlp.shared_experts", d, (long)c.MoeIntermediateSize * c.NSharedExperts)) yield return t;
        }
        yield return new("model.norm.weight", [d]);
        if (!c.TieWordEmbeddings) yield return new("lm_head.weight", [c.VocabSize, d]);
    }

    static IEnumerable<TensorSpec> Mlp(string prefix, long d, long inter)
    {
        yield return new($"{prefix}.gate_proj.weight", [inter, d]);
        yield return new($"{prefix}.up_proj.weight", [inter, d]);
        yield return new($"{prefix}.down_proj.weight", [d, inter]);
    }
}
