using Grid.ModelCore.Config;
using Grid.ModelCore.Tokenization;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;

namespace Grid.Benchmarks;

/// <summary>
/// Writes a Grid DeepSeek-V2 checkpoint as a GGUF file for llama.cpp's <c>deepseek2</c> architecture, float32
/// tensors, following the layout llama.cpp's own converter produces: MLA form (kv_b split into per-head
/// <c>attn_k_b</c> [H, kv_lora_rank, nope] and <c>attn_v_b</c> [H, v, kv_lora_rank], one KV head of
/// kv_lora_rank + rope), routed experts stacked per layer, YaRN with the converter's pre-scaled log multiplier.
/// <para>
/// llama.cpp reads <c>q_lora_rank</c> as required unless the model has 26 or 27 layers (its test for
/// "V2-Lite"), so a model without query compression (like the benchmark model) is written as an exactly
/// equivalent one with it: attn_norm's weight g folded into the next matrices (attn_norm = 1, kv_a·diag(g),
/// q·diag(g)), q_a = identity [d, d], q_a_norm = 1. The q_a RMSNorm then sees the unit-RMS normed hidden state
/// and changes it by a factor sqrt((m+eps)/m) (m: mean square of the layer input), 1 + 5e-7 on this model.
/// The identity costs llama.cpp one extra d×d matmul per layer (+4 MB of weights read per layer per step).
/// </para>
/// <para>The vocabulary is Grid's ids one for one: ids 0-255 are the byte tokens (GPT-2 byte alphabet, as
/// Grid's byte tokenizer), every other id a control token; BOS/EOS from the config.</para>
/// </summary>
public static class GgufExport
{
    /// <summary>Bump when the layout written changes (cached files are keyed by it).</summary>
    public const string LayoutVersion = "v1";

    /// <summary>The extra per-token weight bytes llama.cpp reads because of the identity q_a (see the class remarks).</summary>
    public static long ExtraBytesPerToken(ModelConfig c) =>
        c.QLoraRank is null ? (long)c.NumHiddenLayers * c.HiddenSize * c.HiddenSize * sizeof(float) : 0;

    public static void Write(string checkpointDir, string path, Action<string> log)
    {
        var c = ModelConfig.Load(Path.Combine(checkpointDir, "config.json"));
        if (c.AttentionBias) throw new NotSupportedException("attention biases have no place in llama.cpp's deepseek2 graph");
        using var ckpt = Checkpoint.Open(checkpointDir);
        var g = new GgufWriter();
        const string a = "deepseek2";
        int qLora = c.QLoraRank ?? c.HiddenSize;
        g.Add("general.architecture", a);
        g.Add("general.name", "grid-bench-" + Path.GetFileName(checkpointDir.TrimEnd('/')));
        g.Add("general.file_type", 0u); // ALL_F32
        g.Add($"{a}.block_count", (uint)c.NumHiddenLayers);
        g.Add($"{a}.context_length", (uint)c.MaxPositionEmbeddings);
        g.Add($"{a}.embedding_length", (uint)c.HiddenSize);
        g.Add($"{a}.feed_forward_length", (uint)c.IntermediateSize);
        g.Add($"{a}.attention.head_count", (uint)c.NumAttentionHeads);
        g.Add($"{a}.attention.head_count_kv", 1u); // MLA: one latent "head" shared by all query heads
        g.Add($"{a}.rope.freq_base", (float)c.RopeTheta);
        g.Add($"{a}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        g.Add($"{a}.expert_count", (uint)c.NRoutedExperts);
        g.Add($"{a}.expert_used_count", (uint)c.NumExpertsPerTok);
        g.Add($"{a}.leading_dense_block_count", (uint)c.FirstKDenseReplace);
        g.Add($"{a}.vocab_size", (uint)c.VocabSize);
        g.Add($"{a}.attention.q_lora_rank", (uint)qLora);
        g.Add($"{a}.attention.kv_lora_rank", (uint)c.KvLoraRank);
        g.Add($"{a}.attention.key_length", (uint)(c.KvLoraRank + c.QkRopeHeadDim));
        g.Add($"{a}.attention.value_length", (uint)c.KvLoraRank);
        g.Add($"{a}.attention.key_length_mla", (uint)c.QHeadDim);
        g.Add($"{a}.attention.value_length_mla", (uint)c.VHeadDim);
        g.Add($"{a}.expert_feed_forward_length", (uint)c.MoeIntermediateSize);
        g.Add($"{a}.expert_shared_count", (uint)c.NSharedExperts);
        g.Add($"{a}.expert_weights_scale", (float)c.RoutedScalingFactor);
        g.Add($"{a}.expert_weights_norm", c.NormTopkProb);
        g.Add($"{a}.expert_gating_func", c.ScoringFunc == "sigmoid" ? 2u : 1u);
        g.Add($"{a}.rope.dimension_count", (uint)c.QkRopeHeadDim);
        if (c.RopeScaling is { Type: "yarn" } rs)
        {
            g.Add($"{a}.rope.scaling.type", "yarn");
            g.Add($"{a}.rope.scaling.factor", (float)rs.Factor);
            g.Add($"{a}.rope.scaling.original_context_length", (uint)rs.OriginalMaxPositionEmbeddings);
            // llama.cpp's converter writes 0.1 * mscale_all_dim for deepseek2 and its loader undoes the 0.1.
            g.Add($"{a}.rope.scaling.yarn_log_multiplier", (float)(0.1 * rs.MscaleAllDim));
            g.Add($"{a}.rope.scaling.yarn_beta_fast", (float)rs.BetaFast);
            g.Add($"{a}.rope.scaling.yarn_beta_slow", (float)rs.BetaSlow);
        }
        else if (c.RopeScaling is not null)
        {
            throw new NotSupportedException($"rope_scaling {c.RopeScaling.Type}: only yarn is exported");
        }
        AddVocabulary(g, c);

        long d = c.HiddenSize, h = c.NumAttentionHeads;
        float[] Raw(string name) => Load(ckpt, name, t => t);
        g.AddTensor("token_embd.weight", [c.VocabSize, d], () => Raw("model.embed_tokens.weight"));
        g.AddTensor("output_norm.weight", [d], () => Raw("model.norm.weight"));
        g.AddTensor("output.weight", [c.VocabSize, d], () => Raw(c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var p = TensorNames.Layer(i);
            var blk = $"blk.{i}";
            var attn = $"{p}.self_attn";
            // The input norm's weight, folded into the matrices that read the normed state when q_a is synthesised.
            Tensor NormWeight() => Tensor(ckpt, $"{p}.input_layernorm.weight");
            if (c.QLoraRank is null)
            {
                g.AddTensor($"{blk}.attn_norm.weight", [d], () => Enumerable.Repeat(1f, (int)d).ToArray());
                g.AddTensor($"{blk}.attn_q_a.weight", [d, d], () => Identity((int)d));
                g.AddTensor($"{blk}.attn_q_a_norm.weight", [d], () => Enumerable.Repeat(1f, (int)d).ToArray());
                g.AddTensor($"{blk}.attn_q_b.weight", [h * c.QHeadDim, d], () => Load(ckpt, $"{attn}.q_proj.weight", q => { using var gw = NormWeight(); return q * gw; }));
                g.AddTensor($"{blk}.attn_kv_a_mqa.weight", [c.LatentDim, d], () => Load(ckpt, $"{attn}.kv_a_proj_with_mqa.weight", w => { using var gw = NormWeight(); return w * gw; }));
            }
            else
            {
                g.AddTensor($"{blk}.attn_norm.weight", [d], () => Raw($"{p}.input_layernorm.weight"));
                g.AddTensor($"{blk}.attn_q_a.weight", [qLora, d], () => Raw($"{attn}.q_a_proj.weight"));
                g.AddTensor($"{blk}.attn_q_a_norm.weight", [qLora], () => Raw($"{attn}.q_a_layernorm.weight"));
                g.AddTensor($"{blk}.attn_q_b.weight", [h * c.QHeadDim, qLora], () => Raw($"{attn}.q_b_proj.weight"));
                g.AddTensor($"{blk}.attn_kv_a_mqa.weight", [c.LatentDim, d], () => Raw($"{attn}.kv_a_proj_with_mqa.weight"));
            }
            g.AddTensor($"{blk}.attn_kv_a_norm.weight", [c.KvLoraRank], () => Raw($"{attn}.kv_a_layernorm.weight"));
            // kv_b [H*(nope+v), kvr] -> per head [nope+v, kvr]: k_b = nope rows transposed [H, kvr, nope], v_b = v rows [H, v, kvr].
            g.AddTensor($"{blk}.attn_k_b.weight", [h, c.KvLoraRank, c.QkNopeHeadDim], () => Load(ckpt, $"{attn}.kv_b_proj.weight",
                w => w.view(h, c.QkNopeHeadDim + c.VHeadDim, c.KvLoraRank).narrow(1, 0, c.QkNopeHeadDim).transpose(1, 2)));
            g.AddTensor($"{blk}.attn_v_b.weight", [h, c.VHeadDim, c.KvLoraRank], () => Load(ckpt, $"{attn}.kv_b_proj.weight",
                w => w.view(h, c.QkNopeHeadDim + c.VHeadDim, c.KvLoraRank).narrow(1, c.QkNopeHeadDim, c.VHeadDim)));
            g.AddTensor($"{blk}.attn_output.weight", [d, h * c.VHeadDim], () => Raw($"{attn}.o_proj.weight"));
            g.AddTensor($"{blk}.ffn_norm.weight", [d], () => Raw($"{p}.post_attention_layernorm.weight"));
            if (!c.IsMoeLayer(i))
            {
                g.AddTensor($"{blk}.ffn_gate.weight", [c.IntermediateSize, d], () => Raw($"{p}.mlp.gate_proj.weight"));
                g.AddTensor($"{blk}.ffn_up.weight", [c.IntermediateSize, d], () => Raw($"{p}.mlp.up_proj.weight"));
                g.AddTensor($"{blk}.ffn_down.weight", [d, c.IntermediateSize], () => Raw($"{p}.mlp.down_proj.weight"));
                continue;
            }
            int layer = i;
            long inter = c.MoeIntermediateSize, shared = (long)c.MoeIntermediateSize * c.NSharedExperts;
            g.AddTensor($"{blk}.ffn_gate_inp.weight", [c.NRoutedExperts, d], () => Raw($"{p}.mlp.gate.weight"));
            g.AddTensor($"{blk}.ffn_gate_exps.weight", [c.NRoutedExperts, inter, d], () => Stacked(ckpt, c, layer, "gate_proj"));
            g.AddTensor($"{blk}.ffn_up_exps.weight", [c.NRoutedExperts, inter, d], () => Stacked(ckpt, c, layer, "up_proj"));
            g.AddTensor($"{blk}.ffn_down_exps.weight", [c.NRoutedExperts, d, inter], () => Stacked(ckpt, c, layer, "down_proj"));
            if (c.NSharedExperts > 0)
            {
                g.AddTensor($"{blk}.ffn_gate_shexp.weight", [shared, d], () => Raw($"{p}.mlp.shared_experts.gate_proj.weight"));
                g.AddTensor($"{blk}.ffn_up_shexp.weight", [shared, d], () => Raw($"{p}.mlp.shared_experts.up_proj.weight"));
                g.AddTensor($"{blk}.ffn_down_shexp.weight", [d, shared], () => Raw($"{p}.mlp.shared_experts.down_proj.weight"));
            }
        }
        log($"writing {path} ({g.TensorNames.Count} float32 tensors)");
        g.Write(path, log);
    }

    static void AddVocabulary(GgufWriter g, ModelConfig c)
    {
        var alphabet = ByteTokenizer.ByteAlphabet();
        var tokens = new string[c.VocabSize];
        var types = new int[c.VocabSize];
        for (int id = 0; id < c.VocabSize; id++)
        {
            bool isByte = id < 256;
            tokens[id] = isByte ? alphabet[id].ToString() : $"<|grid_{id}|>";
            types[id] = isByte ? 1 : 3; // normal / control
        }
        g.Add("tokenizer.ggml.model", "gpt2");
        g.Add("tokenizer.ggml.pre", "default");
        g.Add("tokenizer.ggml.tokens", tokens);
        g.Add("tokenizer.ggml.token_type", types);
        g.Add("tokenizer.ggml.merges", Array.Empty<string>());
        if (c.BosTokenId is int bos) g.Add("tokenizer.ggml.bos_token_id", (uint)bos);
        if (c.EosTokenId is int eos) g.Add("tokenizer.ggml.eos_token_id", (uint)eos);
        g.Add("tokenizer.ggml.add_bos_token", false);
        g.Add("tokenizer.ggml.add_eos_token", false);
    }

    static Tensor Tensor(Checkpoint ckpt, string name) => ckpt.Load(name, ckpt.Entries[name].Shape, ScalarType.Float32);

    static float[] Load(Checkpoint ckpt, string name, Func<Tensor, Tensor> transform)
    {
        using var t = Tensor(ckpt, name);
        using var scope = NewDisposeScope();
        return transform(t).contiguous().data<float>().ToArray();
    }

    static float[] Stacked(Checkpoint ckpt, ModelConfig c, int layer, string part)
    {
        var experts = Enumerable.Range(0, c.NRoutedExperts).Select(e => Tensor(ckpt, $"{TensorNames.Expert(layer, e)}.{part}.weight")).ToArray();
        try
        {
            using var scope = NewDisposeScope();
            return stack(experts, 0).data<float>().ToArray();
        }
        finally { foreach (var t in experts) t.Dispose(); }
    }

    static float[] Identity(int n)
    {
        var m = new float[(long)n * n];
        for (int i = 0; i < n; i++) m[(long)i * n + i] = 1f;
        return m;
    }
}
