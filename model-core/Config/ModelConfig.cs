using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.ModelCore.Config;

/// <summary>How the rotary position embedding is scaled (config key <c>rope_scaling</c>).</summary>
public sealed record RopeScaling(
    string Type,
    double Factor,
    int OriginalMaxPositionEmbeddings,
    double BetaFast,
    double BetaSlow,
    double Mscale,
    double MscaleAllDim);

/// <summary>
/// A <c>config.json</c> with <c>model_type: deepseek_v2</c>, every key the released DeepSeek-V2 and
/// V2-Lite checkpoints carry. Unsupported values fail with a <see cref="ModelConfigException"/> naming the key.
/// </summary>
public sealed record ModelConfig
{
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int MoeIntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int? QLoraRank { get; init; }
    public int KvLoraRank { get; init; }
    public int QkNopeHeadDim { get; init; }
    public int QkRopeHeadDim { get; init; }
    public int VHeadDim { get; init; }
    public int NRoutedExperts { get; init; }
    public int NSharedExperts { get; init; }
    public int NumExpertsPerTok { get; init; }
    public int FirstKDenseReplace { get; init; }
    public int MoeLayerFreq { get; init; } = 1;
    public string TopkMethod { get; init; } = "greedy";
    public int NGroup { get; init; } = 1;
    public int TopkGroup { get; init; } = 1;
    public bool NormTopkProb { get; init; }
    public double RoutedScalingFactor { get; init; } = 1.0;
    public string ScoringFunc { get; init; } = "softmax";
    public string HiddenAct { get; init; } = "silu";
    public double RopeTheta { get; init; } = 10000;
    public RopeScaling? RopeScaling { get; init; }
    public int MaxPositionEmbeddings { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public bool TieWordEmbeddings { get; init; }
    public bool AttentionBias { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    public string TorchDtype { get; init; } = "float32";
    /// <summary>Whether the checkpoint ships FP8 E4M3 linear weights with 128x128 <c>weight_scale_inv</c> blocks
    /// (<c>quantization_config: {quant_method: fp8, fmt: e4m3, weight_block_size: [128, 128]}</c>).</summary>
    public bool Fp8Checkpoint { get; init; }

    public int QHeadDim => QkNopeHeadDim + QkRopeHeadDim;

    /// <summary>Elements the latent cache holds per token and layer: c_KV plus the shared RoPE key.</summary>
    public int LatentDim => KvLoraRank + QkRopeHeadDim;

    /// <summary>True where layer <paramref name="layer"/> is a DeepSeekMoE layer (else a dense MLP).</summary>
    public bool IsMoeLayer(int layer) =>
        NRoutedExperts > 0 && layer >= FirstKDenseReplace && layer % MoeLayerFreq == 0;

    public IEnumerable<int> MoeLayers => Enumerable.Range(0, NumHiddenLayers).Where(IsMoeLayer);

    public static ModelConfig Load(string path)
    {
        if (!File.Exists(path)) throw new ModelConfigException($"config.json not found: {path}");
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new ModelConfigException($"{path}: not valid JSON ({e.Message})"); }
        if (node is not JsonObject obj) throw new ModelConfigException($"{path}: expected a JSON object");
        return FromJson(obj);
    }

    public static ModelConfig FromJson(JsonObject o)
    {
        var modelType = Str(o, "model_type", null);
        if (modelType != "deepseek_v2")
            throw new ModelConfigException($"model_type: '{modelType}' is not supported (expected 'deepseek_v2')");

        int heads = Int(o, "num_attention_heads");
        var cfg = new ModelConfig
        {
            VocabSize = Int(o, "vocab_size"),
            HiddenSize = Int(o, "hidden_size"),
            IntermediateSize = Int(o, "intermediate_size"),
            MoeIntermediateSize = IntOr(o, "moe_intermediate_size", 0),
            NumHiddenLayers = Int(o, "num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = IntOr(o, "num_key_value_heads", heads),
            QLoraRank = NullableInt(o, "q_lora_rank"),
            KvLoraRank = Int(o, "kv_lora_rank"),
            QkNopeHeadDim = Int(o, "qk_nope_head_dim"),
            QkRopeHeadDim = Int(o, "qk_rope_head_dim"),
            VHeadDim = Int(o, "v_head_dim"),
            NRoutedExperts = NullableInt(o, "n_routed_experts") ?? 0,
            NSharedExperts = NullableInt(o, "n_shared_experts") ?? 0,
            NumExpertsPerTok = NullableInt(o, "num_experts_per_tok") ?? 0,
            FirstKDenseReplace = IntOr(o, "first_k_dense_replace", 0),
            MoeLayerFreq = IntOr(o, "moe_layer_freq", 1),
            TopkMethod = Str(o, "topk_method", "greedy")!,
            NGroup = NullableInt(o, "n_group") ?? 1,
            TopkGroup = NullableInt(o, "topk_group") ?? 1,
            NormTopkProb = BoolOr(o, "norm_topk_prob", false),
            RoutedScalingFactor = DoubleOr(o, "routed_scaling_factor", 1.0),
            ScoringFunc = Str(o, "scoring_func", "softmax")!,
            HiddenAct = Str(o, "hidden_act", "silu")!,
            RopeTheta = DoubleOr(o, "rope_theta", 10000),
            RopeScaling = ParseRopeScaling(o),
            MaxPositionEmbeddings = IntOr(o, "max_position_embeddings", 2048),
            RmsNormEps = DoubleOr(o, "rms_norm_eps", 1e-6),
            TieWordEmbeddings = BoolOr(o, "tie_word_embeddings", false),
            AttentionBias = BoolOr(o, "attention_bias", false),
            BosTokenId = NullableInt(o, "bos_token_id"),
            EosTokenId = NullableInt(o, "eos_token_id"),
            TorchDtype = Str(o, "torch_dtype", "float32")!,
            Fp8Checkpoint = ParseQuantizationConfig(o),
        };
        cfg.Validate();
        return cfg;
    }

    void Validate()
    {
        if (ScoringFunc != "softmax")
            throw new ModelConfigException($"scoring_func: '{ScoringFunc}' is not supported (DeepSeek-V2 uses 'softmax')");
        if (TopkMethod is not ("greedy" or "group_limited_greedy"))
            throw new ModelConfigException($"topk_method: '{TopkMethod}' is not supported (expected 'greedy' or 'group_limited_greedy')");
        if (HiddenAct != "silu")
            throw new ModelConfigException($"hidden_act: '{HiddenAct}' is not supported (expected 'silu')");
        if (MoeLayerFreq < 1) throw new ModelConfigException($"moe_layer_freq: must be >= 1, got {MoeLayerFreq}");
        if (QkRopeHeadDim % 2 != 0) throw new ModelConfigException($"qk_rope_head_dim: must be even, got {QkRopeHeadDim}");
        if (NRoutedExperts > 0)
        {
            if (NumExpertsPerTok < 1 || NumExpertsPerTok > NRoutedExperts)
                throw new ModelConfigException($"num_experts_per_tok: {NumExpertsPerTok} must be in 1..n_routed_experts ({NRoutedExperts})");
            if (TopkMethod == "group_limited_greedy")
            {
                if (NGroup < 1 || NRoutedExperts % NGroup != 0)
                    throw new ModelConfigException($"n_group: {NGroup} must divide n_routed_experts ({NRoutedExperts})");
                if (TopkGroup < 1 || TopkGroup > NGroup)
                    throw new ModelConfigException($"topk_group: {TopkGroup} must be in 1..n_group ({NGroup})");
                if (TopkGroup * (NRoutedExperts / NGroup) < NumExpertsPerTok)
                    throw new ModelConfigException($"topk_group: {TopkGroup} groups of {NRoutedExperts / NGroup} experts cannot hold num_experts_per_tok ({NumExpertsPerTok})");
            }
            if (MoeIntermediateSize < 1) throw new ModelConfigException("moe_intermediate_size: required when n_routed_experts is set");
        }
        if (NumKeyValueHeads != NumAttentionHeads)
            throw new ModelConfigException($"num_key_value_heads: {NumKeyValueHeads} must equal num_attention_heads ({NumAttentionHeads}) for MLA");
        if (RopeScaling is { } rs && rs.Type is not ("yarn" or "linear"))
            throw new ModelConfigException($"rope_scaling.type: '{rs.Type}' is not supported (expected 'yarn' or 'linear')");
    }

    /// <summary>
    /// quantization_config: absent/null, or DeepSeek-V3's FP8 layout (quant_method fp8, fmt e4m3, weight_block_size
    /// [128, 128], activation_scheme dynamic or absent). Everything else is refused by name: other methods (awq, gptq,
    /// bitsandbytes, ...) store weights differently, and a static activation scheme needs input scales Grid does not apply.
    /// </summary>
    static bool ParseQuantizationConfig(JsonObject o)
    {
        if (!o.TryGetPropertyValue("quantization_config", out var n) || n is null) return false;
        if (n is not JsonObject q) throw new ModelConfigException("quantization_config: expected an object or null");
        const string Supported = "supported: quant_method 'fp8' with fmt 'e4m3', weight_block_size [128, 128], activation_scheme 'dynamic'";
        var method = Str(q, "quant_method", null);
        if (method != "fp8") throw new ModelConfigException($"quantization_config.quant_method: '{method}' is not supported ({Supported})");
        var fmt = Str(q, "fmt", "e4m3");
        if (fmt != "e4m3") throw new ModelConfigException($"quantization_config.fmt: '{fmt}' is not supported ({Supported})");
        var scheme = Str(q, "activation_scheme", "dynamic");
        if (scheme != "dynamic") throw new ModelConfigException($"quantization_config.activation_scheme: '{scheme}' is not supported ({Supported}); Grid computes activations in the compute dtype");
        if (q.TryGetPropertyValue("weight_block_size", out var b) && b is not null)
        {
            var block = b is JsonArray arr && arr.Count == 2 && arr.All(x => x is JsonValue v && v.TryGetValue<int>(out _)) ? arr.Select(x => x!.GetValue<int>()).ToArray() : null;
            if (block is not [128, 128]) throw new ModelConfigException($"quantization_config.weight_block_size: {b.ToJsonString()} is not supported ({Supported})");
        }
        else throw new ModelConfigException($"quantization_config.weight_block_size: missing ({Supported}; per-tensor FP8 scales are not supported)");
        return true;
    }

    static RopeScaling? ParseRopeScaling(JsonObject o)
    {
        if (!o.TryGetPropertyValue("rope_scaling", out var n) || n is null) return null;
        if (n is not JsonObject rs) throw new ModelConfigException("rope_scaling: expected an object or null");
        var type = Str(rs, "type", null) ?? Str(rs, "rope_type", null)
            ?? throw new ModelConfigException("rope_scaling.type: missing");
        double factor = DoubleOr(rs, "factor", double.NaN, "rope_scaling.");
        if (double.IsNaN(factor)) throw new ModelConfigException("rope_scaling.factor: missing");
        return new RopeScaling(
            type, factor,
            IntOr(rs, "original_max_position_embeddings", 4096, "rope_scaling."),
            DoubleOr(rs, "beta_fast", 32, "rope_scaling."),
            DoubleOr(rs, "beta_slow", 1, "rope_scaling."),
            DoubleOr(rs, "mscale", 1, "rope_scaling."),
            DoubleOr(rs, "mscale_all_dim", 0, "rope_scaling."));
    }

    static JsonNode? Get(JsonObject o, string key) => o.TryGetPropertyValue(key, out var n) ? n : null;

    static int Int(JsonObject o, string key) =>
        NullableInt(o, key) ?? throw new ModelConfigException($"{key}: missing (required)");

    static int IntOr(JsonObject o, string key, int fallback, string prefix = "") => NullableInt(o, key, prefix) ?? fallback;

    static int? NullableInt(JsonObject o, string key, string prefix = "")
    {
        var n = Get(o, key);
        if (n is null) return null;
        if (n is JsonValue v)
        {
            if (v.TryGetValue<int>(out var i)) return i;
            if (v.TryGetValue<long>(out var l) && l is >= int.MinValue and <= int.MaxValue) return (int)l;
            if (v.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
        }
        throw new ModelConfigException($"{prefix}{key}: expected an integer, got {n.ToJsonString()}");
    }

    static double DoubleOr(JsonObject o, string key, double fallback, string prefix = "")
    {
        var n = Get(o, key);
        if (n is null) return fallback;
        if (n is JsonValue v)
        {
            if (v.TryGetValue<double>(out var d)) return d;
            if (v.TryGetValue<int>(out var i)) return i;
            if (v.TryGetValue<long>(out var l)) return l;
        }
        throw new ModelConfigException($"{prefix}{key}: expected a number, got {n.ToJsonString()}");
    }

    static bool BoolOr(JsonObject o, string key, bool fallback)
    {
        var n = Get(o, key);
        if (n is null) return fallback;
        if (n is JsonValue v && v.TryGetValue<bool>(out var b)) return b;
        throw new ModelConfigException($"{key}: expected true or false, got {n.ToJsonString()}");
    }

    static string? Str(JsonObject o, string key, string? fallback)
    {
        var n = Get(o, key);
        if (n is null) return fallback;
        if (n is JsonValue v && v.TryGetValue<string>(out var s)) return s;
        throw new ModelConfigException($"{key}: expected a string, got {n.ToJsonString()}");
    }
}

public sealed class ModelConfigException(string message) : Exception(message);
