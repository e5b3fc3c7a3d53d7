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

    /// <summary>
    /// DeepSeek-V2-Lite's released config.json (15.7B parameters: 27 layers, the first dense, 64 routed experts + 2 shared,
    /// 6 per token, MLA without a query compression, YaRN x40), except the BOS/EOS ids, which are the built-in byte
    /// tokenizer's: the preset is written with that tokenizer.
    /// </summary>
    public static JsonObject DeepseekV2LiteConfig() => new()
    {
        ["architectures"] = new JsonArray("DeepseekV2ForCausalLM"),
        ["model_type"] = "deepseek_v2",
        ["vocab_size"] = 102400,
        ["hidden_size"] = 2048,
        ["intermediate_size"] = 10944,
        ["moe_intermediate_size"] = 1408,
        ["num_hidden_layers"] = 27,
        ["num_attention_heads"] = 16,
        ["num_key_value_heads"] = 16,
        ["q_lora_rank"] = null,
        ["kv_lora_rank"] = 512,
        ["qk_nope_head_dim"] = 128,
        ["qk_rope_head_dim"] = 64,
        ["v_head_dim"] = 128,
        ["n_routed_experts"] = 64,
        ["n_shared_experts"] = 2,
        ["num_experts_per_tok"] = 6,
        ["first_k_dense_replace"] = 1,
        ["moe_layer_freq"] = 1,
        ["topk_method"] = "greedy",
        ["n_group"] = 1,
        ["topk_group"] = 1,
        ["norm_topk_prob"] = false,
        ["routed_scaling_factor"] = 1.0,
        ["scoring_func"] = "softmax",
        ["aux_loss_alpha"] = 0.001,
        ["seq_aux"] = true,
        ["hidden_act"] = "silu",
        ["max_position_embeddings"] = 163840,
        ["rope_theta"] = 10000,
        ["rope_scaling"] = new JsonObject
        {
            ["type"] = "yarn", ["factor"] = 40, ["original_max_position_embeddings"] = 4096,
            ["beta_fast"] = 32, ["beta_slow"] = 1, ["mscale"] = 0.707, ["mscale_all_dim"] = 0.707,
        },
        ["rms_norm_eps"] = 1e-6,
        ["initializer_range"] = 0.02,
        ["tie_word_embeddings"] = false,
        ["attention_bias"] = false,
        ["attention_dropout"] = 0.0,
        ["pretraining_tp"] = 1,
        ["use_cache"] = true,
        ["bos_token_id"] = ByteTokenizer.BosId,
        ["eos_token_id"] = ByteTokenizer.EosId,
        ["torch_dtype"] = "bfloat16",
    };

    /// <summary>
    /// DeepSeek-V2-Lite's structure at a size CI can write in seconds: the same features (no query compression, greedy
    /// routing over one group, dense first layer, 2 shared experts, 6 of the routed ones per token, YaRN x40), narrower
    /// and with 4 layers and 16 routed experts.
    /// </summary>
    public static JsonObject DeepseekV2LiteMiniConfig()
    {
        var c = DeepseekV2LiteConfig();
        c["vocab_size"] = 1024;
        c["hidden_size"] = 128;
        c["intermediate_size"] = 384;
        c["moe_intermediate_size"] = 64;
        c["num_hidden_layers"] = 4;
        c["num_attention_heads"] = 4;
        c["num_key_value_heads"] = 4;
        c["kv_lora_rank"] = 64;
        c["qk_nope_head_dim"] = 32;
        c["qk_rope_head_dim"] = 16;
        c["v_head_dim"] = 32;
        c["n_routed_experts"] = 16;
        return c;
    }

    /// <summary>The presets <c>grid write-checkpoint --preset</c> knows, by name.</summary>
    public static IReadOnlyDictionary<string, Func<JsonObject>> Presets { get; } = new Dictionary<string, Func<JsonObject>>(StringComparer.Ordinal)
    {
        ["deepseek-v2-lite"] = DeepseekV2LiteConfig,
        ["deepseek-v2-lite-mini"] = DeepseekV2LiteMiniConfig,
    };

    /// <summary>The bytes of the weights of <paramref name="config"/> stored in <paramref name="dtype"/>.</summary>
    public static long WeightBytes(JsonObject config, StorageDtype dtype) =>
        TensorNames.All(ModelConfig.FromJson(config)).Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b)) * TensorEntry.ElementSize(dtype);

    /// <summary>
    /// Writes a full checkpoint folder for <paramref name="config"/>: config.json, generation_config.json, the byte
    /// tokenizer, and random weights in shards of about <paramref name="shardBytes"/> with model.safetensors.index.json.
    /// The values are drawn in parallel chunks of 2^20 elements, each from its own SplitMix64 stream (seeded by the
    /// seed, the tensor and the chunk), so the bytes depend on the seed only, not on the threads. Progress reports bytes written.
    /// </summary>
    public static void WriteFast(string directory, JsonObject config, ulong seed, StorageDtype dtype, long shardBytes, IProgress<long>? bytesWritten = null)
    {
        if (shardBytes < 1) throw new ArgumentOutOfRangeException(nameof(shardBytes));
        var parsed = WriteConfigs(directory, config);
        var specs = TensorNames.All(parsed).ToList();
        long total = WeightBytes(config, dtype);
        int shards = (int)Math.Clamp((total + shardBytes - 1) / shardBytes, 1, specs.Count);
        var tensors = specs.Select((s, i) => new TensorData(s.Name, s.Shape,
            () => FastValues(s, SplitMix64.Mix(seed ^ ((ulong)i * 0x9E3779B97F4A7C15UL)), parsed))).ToList();
        SafetensorsWriter.Write(directory, tensors, dtype, shards, bytesWritten);
        ByteTokenizer.Write(directory);
    }

    const int FastChunk = 1 << 20;

    static float[] FastValues(TensorSpec spec, ulong tensorSeed, ModelConfig c)
    {
        long n = spec.Shape.Aggregate(1L, (a, b) => a * b);
        var data = new float[n];
        float mean = spec.Shape.Length == 1 ? 1f : 0f;
        float std = spec.Shape.Length == 1 ? 0.1f
            : spec.Name.EndsWith("embed_tokens.weight") ? 1f : 1f / MathF.Sqrt(spec.Shape[1]);
        if (spec.Name.EndsWith("mlp.gate.weight")) std *= 4; // distinct routing preferences
        int chunks = (int)((n + FastChunk - 1) / FastChunk);
        Parallel.For(0, chunks, chunk =>
        {
            var rng = new SplitMix64(SplitMix64.Mix(tensorSeed + (ulong)chunk));
            long from = (long)chunk * FastChunk, to = Math.Min(n, from + FastChunk);
            for (long i = from; i < to; i += 2)
            {
                // Box-Muller on the two 32-bit halves of one draw: two normal values.
                ulong bits = rng.Next();
                float u1 = ((uint)(bits >> 32) + 1f) * (1f / 4294967296f);   // (0, 1]
                float u2 = (uint)bits * (1f / 4294967296f);
                float radius = std * MathF.Sqrt(-2f * MathF.Log(u1));
                var (sin, cos) = MathF.SinCos(2f * MathF.PI * u2);
                data[i] = mean + radius * cos;
                if (i + 1 < to) data[i + 1] = mean + radius * sin;
            }
        });
        return data;
    }

    static ModelConfig WriteConfigs(string directory, JsonObject config)
    {
        Directory.CreateDirectory(directory);
        var indented = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString(indented));
        var parsed = ModelConfig.FromJson(config);
        File.WriteAllText(Path.Combine(directory, "generation_config.json"), new JsonObject
        {
            ["bos_token_id"] = parsed.BosTokenId, ["eos_token_id"] = parsed.EosTokenId, ["do_sample"] = false,
        }.ToJsonString(indented));
        return parsed;
    }

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
        var parsed = WriteConfigs(directory, config);
        var specs = TensorNames.All(parsed).ToList();
        int done = 0;
        var tensors = specs.Select((s, i) => new TensorData(s.Name, s.Shape, () =>
        {
            if (Interlocked.Increment(ref done) % 50 == 0) progress?.Report($"weights {done}/{specs.Count}");
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
