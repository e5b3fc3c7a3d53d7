using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Tokenization;

namespace Grid.ModelCore.Weights;

/// <summary>
/// Writes deterministic random-weight DeepSeek-V2 checkpoints in the Hugging Face layout (config.json,
/// safetensors, tokenizer.json, tokenizer_config.json, generation_config.json): the built-in default model
/// and the benchmark model. Values come from a seeded SplitMix64, so every machine writes the same bytes.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>The built-in tiny model's config: every DeepSeek-V2 feature (MLA with YaRN, dense first layer, group-limited MoE with shared experts).</summary>
    public static JsonObject TinyConfig() => new()
    {
        ["architectures"] = new JsonArray("DeepseekV2ForCausalLM"),
        ["model_type"] = "deepseek_v2",
        ["vocab_size"] = 320,
        ["hidden_size"] = 64,
        ["intermediate_size"] = 160,
        ["moe_intermediate_size"] = 32,
        ["num_hidden_layers"] = 3,
        ["num_attention_heads"] = 4,
        ["num_key_value_heads"] = 4,
        ["q_lora_rank"] = 48,
        ["kv_lora_rank"] = 32,
        ["qk_nope_head_dim"] = 16,
        ["qk_rope_head_dim"] = 8,
        ["v_head_dim"] = 16,
        ["n_routed_experts"] = 8,
        ["n_shared_experts"] = 1,
        ["num_experts_per_tok"] = 2,
        ["first_k_dense_replace"] = 1,
        ["moe_layer_freq"] = 1,
        ["topk_method"] = "group_limited_greedy",
        ["n_group"] = 4,
        ["topk_group"] = 2,
        ["norm_topk_prob"] = false,
        ["routed_scaling_factor"] = 1.0,
        ["scoring_func"] = "softmax",
        ["hidden_act"] = "silu",
        ["max_position_embeddings"] = 4096,
        ["rope_theta"] = 10000,
        ["rope_scaling"] = new JsonObject
        {
            ["type"] = "yarn", ["factor"] = 4, ["original_max_position_embeddings"] = 1024,
            ["beta_fast"] = 32, ["beta_slow"] = 1, ["mscale"] = 0.707, ["mscale_all_dim"] = 0.707,
        },
        ["rms_norm_eps"] = 1e-6,
        ["tie_word_embeddings"] = false,
        ["attention_bias"] = false,
        ["bos_token_id"] = ByteTokenizer.BosId,
        ["eos_token_id"] = ByteTokenizer.EosId,
        ["torch_dtype"] = "float32",
    };

    /// <summary>The folder of the built-in tiny checkpoint, written on first use.</summary>
    public static string EnsureBuiltIn(IProgress<string>? progress = null)
    {
        var root = Environment.GetEnvironmentVariable("GRID_HOME")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "grid");
        var dir = Path.Combine(root, "builtin-tiny-v1");
        if (File.Exists(Path.Combine(dir, ".complete"))) return dir;
        progress?.Report($"writing the built-in tiny checkpoint to {dir}");
        var tmp = dir + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Write(tmp, TinyConfig(), seed: 20240507, StorageDtype.F32, shards: 1);
        ByteTokenizer.Write(tmp);
        File.WriteAllText(Path.Combine(tmp, ".complete"), "");
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (File.Exists(Path.Combine(dir, ".complete"))) { Directory.Delete(tmp, true); } // another process won
        return dir;
    }

    /// <summary>Writes config.json, generation_config.json and random weights for <paramref name="config"/>.</summary>
    public static void Write(string directory, JsonObject config, ulong seed, StorageDtype dtype, int shards, IProgress<string>? progress = null)
    {
        Directory.CreateDirectory(directory);
        var indented = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString(indented));
        var parsed = ModelConfig.FromJson(config);
        File.WriteAllText(Path.Combine(directory, "generation_config.json"), new JsonObject
        {
            ["bos_token_id"] = parsed.BosTokenId, ["eos_token_id"] = parsed.EosTokenId, ["do_sample"] = false,
        }.ToJsonString(indented));
        var specs = TensorNames.All(parsed).ToList();
        int done = 0;
        var tensors = specs.Select((s, i) => new TensorData(s.Name, s.Shape, () =>
        {
            if (++done % 50 == 0) progress?.Report($"weights {done}/{specs.Count}");
            return Values(s, seed + (ulong)i * 0x9E3779B97F4A7C15UL, parsed);
        })).ToList();
        SafetensorsWriter.Write(directory, tensors, dtype, shards);
    }

    static float[] Values(TensorSpec spec, ulong seed, ModelConfig c)
    {
        var rng = new SplitMix64(seed);
        long n = spec.Shape.Aggregate(1L, (a, b) => a * b);
        var data = new float[n];
        if (spec.Shape.Length == 1)
        {
            // Norm weights: around 1.
            for (long i = 0; i < n; i++) data[i] = (float)(1.0 + 0.1 * rng.NextGaussian());
            return data;
        }
        double std = spec.Name.EndsWith("embed_tokens.weight") ? 1.0 : 1.0 / Math.Sqrt(spec.Shape[1]);
        if (spec.Name.EndsWith("mlp.gate.weight")) std *= 4; // distinct routing preferences
        for (long i = 0; i < n; i++) data[i] = (float)(std * rng.NextGaussian());
        return data;
    }
}
