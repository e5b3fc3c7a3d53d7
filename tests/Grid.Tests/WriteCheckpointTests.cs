using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using Grid.ModelCore.Weights;
using Xunit;
using static Grid.Tests.GenerateCliTests;

namespace Grid.Tests;

/// <summary>
/// <c>grid write-checkpoint</c> run as a real process: the real DeepSeek-V2-Lite preset's config and size (never written
/// here: 29 GiB), its scaled-down twin written through the command (layout, index, dtype, determinism, served in int8),
/// the one-line errors, and role-limited loading measured in the model's weight bytes.
/// </summary>
public sealed class WriteCheckpointTests : IDisposable
{
    readonly string _root = Path.Combine(Path.GetTempPath(), "grid-write-ckpt-" + Guid.NewGuid().ToString("N")[..8]);

    public WriteCheckpointTests() => Directory.CreateDirectory(_root);

    public void Dispose()
    {
        try { Directory.Delete(_root, true); } catch (IOException) { }
    }

    [Fact]
    public void TheV2LitePresetIsTheReleasedShape()
    {
        var json = RandomCheckpoint.Presets["deepseek-v2-lite"]();
        var c = ModelConfig.FromJson(json);
        Assert.Equal(2048, c.HiddenSize);
        Assert.Equal(27, c.NumHiddenLayers);
        Assert.Equal(1, c.FirstKDenseReplace);
        Assert.Equal(64, c.NRoutedExperts);
        Assert.Equal(2, c.NSharedExperts);
        Assert.Equal(6, c.NumExpertsPerTok);
        Assert.Equal(1408, c.MoeIntermediateSize);
        Assert.Equal(10944, c.IntermediateSize);
        Assert.Equal(16, c.NumAttentionHeads);
        Assert.Equal(512, c.KvLoraRank);
        Assert.Null(c.QLoraRank);
        Assert.Equal(128, c.QkNopeHeadDim);
        Assert.Equal(64, c.QkRopeHeadDim);
        Assert.Equal(128, c.VHeadDim);
        Assert.Equal(102400, c.VocabSize);
        Assert.Equal(1, c.NGroup);
        Assert.Equal(1, c.TopkGroup);
        Assert.Equal("greedy", json["topk_method"]!.GetValue<string>());
        Assert.Equal(163840, c.MaxPositionEmbeddings);
        var rope = json["rope_scaling"]!;
        Assert.Equal("yarn", rope["type"]!.GetValue<string>());
        Assert.Equal(40, rope["factor"]!.GetValue<int>());
        Assert.Equal(4096, rope["original_max_position_embeddings"]!.GetValue<int>());
        Assert.Equal(0.707, rope["mscale_all_dim"]!.GetValue<double>());
        // DeepSeek-V2-Lite's 15.7B parameters, 2 bytes each in bf16.
        Assert.Equal(15_706_484_224L * 2, RandomCheckpoint.WeightBytes(json, StorageDtype.BF16));
    }

    string WriteMini(string name, ulong seed)
    {
        var dir = Path.Combine(_root, name);
        var (code, stdout, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v2-lite-mini", "--dtype", "bf16",
            "--out", dir, "--seed", seed.ToString(), "--shard-size-mib", "1");
        Assert.True(code == 0, stderr);
        Assert.Equal(dir, stdout.Trim());
        Assert.Contains("writing weights:", stderr);
        Assert.Contains("(100%)", stderr);
        return dir;
    }

    [Fact]
    public void TheMiniPresetIsWrittenShardedInBf16AndDeterministically()
    {
        var dir = WriteMini("a", 11);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        var c = ModelConfig.FromJson(config);
        // V2-Lite's features at a small size.
        Assert.Null(c.QLoraRank);
        Assert.Equal(1, c.FirstKDenseReplace);
        Assert.Equal(2, c.NSharedExperts);
        Assert.Equal(6, c.NumExpertsPerTok);
        Assert.Equal(40, config["rope_scaling"]!["factor"]!.GetValue<int>());
        Assert.Equal("bfloat16", config["torch_dtype"]!.GetValue<string>());

        var shards = Directory.GetFiles(dir, "model-*-of-*.safetensors").Select(Path.GetFileName).Order().ToArray();
        Assert.True(shards.Length >= 3, $"{shards.Length} shards");
        Assert.All(shards, s => Assert.Matches($"^model-\\d{{5}}-of-{shards.Length:D5}\\.safetensors$", s!));
        Assert.True(File.Exists(Path.Combine(dir, "tokenizer.json")));
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "model.safetensors.index.json")))!;
        var weightMap = index["weight_map"]!.AsObject();
        var specs = TensorNames.All(c).ToList();
        Assert.Equal(specs.Select(s => s.Name).Order(), weightMap.Select(kv => kv.Key).Order());
        Assert.Equal(RandomCheckpoint.WeightBytes(config, StorageDtype.BF16), index["metadata"]!["total_size"]!.GetValue<long>());
        using (var checkpoint = Checkpoint.Open(dir))
        {
            Assert.Equal(specs.Count, checkpoint.Entries.Count);
            Assert.All(checkpoint.Entries.Values, e => Assert.Equal(StorageDtype.BF16, e.Dtype));
            foreach (var s in specs) Assert.Equal(s.Shape, checkpoint.Entries[s.Name].Shape);
            // Random, not constant: the embedding's values spread around 0 with std about 1.
            using var embed = checkpoint.Load("model.embed_tokens.weight", [c.VocabSize, c.HiddenSize], TorchSharp.torch.ScalarType.Float32);
            double std = embed.std().item<float>(), mean = embed.mean().item<float>();
            Assert.InRange(std, 0.95, 1.05);
            Assert.InRange(mean, -0.02, 0.02);
        }

        var same = WriteMini("b", 11);
        var other = WriteMini("c", 12);
        foreach (var shard in shards)
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir, shard!)), File.ReadAllBytes(Path.Combine(same, shard!)));
            Assert.NotEqual(File.ReadAllBytes(Path.Combine(dir, shard!)), File.ReadAllBytes(Path.Combine(other, shard!)));
        }
    }

    [Fact]
    public void TheWrittenCheckpointAnswersInInt8AndDecodesIdsPastTheByteTokenizer()
    {
        var dir = WriteMini("serve", 3);
        // Ids past the byte tokenizer's 258 (the preset's vocabulary is larger) in the prompt and, greedily, in the output.
        var (code, stdout, stderr) = RunGrid("generate", "--model", dir, "--quantization", "int8", "--prompt-ids", "256,900,1000,17",
            "--max-tokens", "12", "--ignore-eos", "--logprobs", "1", "--return-tokens-as-token-ids", "--json");
        Assert.True(code == 0, stderr);
        var obj = JsonNode.Parse(stdout)!;
        Assert.Equal(12, obj["usage"]!["completion_tokens"]!.GetValue<int>());
        var ids = obj["choices"]![0]!["logprobs"]!["tokens"]!.AsArray().Select(t => int.Parse(t!.GetValue<string>()["token_id:".Length..])).ToArray();
        Assert.Equal(12, ids.Length);
        Assert.All(ids, id => Assert.InRange(id, 0, 1023));
        Assert.Contains(ids, id => id > 257);
        // The same ids rendered as text (the byte tokenizer has no token for most of them): no crash, a string.
        var (textCode, textOut, textErr) = RunGrid("generate", "--model", dir, "--quantization", "int8", "--prompt-ids", "256,900,1000,17",
            "--max-tokens", "12", "--ignore-eos", "--json");
        Assert.True(textCode == 0, textErr);
        Assert.NotNull(JsonNode.Parse(textOut)!["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public void BadInputGivesOneLineErrorsAndNonZeroExits()
    {
        var (code, _, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v9", "--out", Path.Combine(_root, "x"));
        Assert.NotEqual(0, code);
        Assert.Equal("error: --preset: unknown preset 'deepseek-v9' (known: deepseek-v2-lite, deepseek-v2-lite-mini)", stderr.Trim());

        (code, _, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v2-lite-mini", "--out", "/proc/grid-write-test");
        Assert.NotEqual(0, code);
        Assert.StartsWith("error: --out: cannot write to /proc/grid-write-test", stderr.Trim());
        Assert.Single(stderr.Trim().Split('\n'));

        // 100000 layers of V2-Lite: about 110 TB, more than any disk this runs on has free; nothing is written.
        var big = Path.Combine(_root, "big");
        (code, _, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v2-lite", "--layers", "100000", "--out", big);
        Assert.NotEqual(0, code);
        Assert.StartsWith($"error: not enough disk space in {big}: the deepseek-v2-lite checkpoint needs ", stderr.Trim());
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.Empty(Directory.GetFiles(big));

        var full = WriteMini("full", 1);
        (code, _, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v2-lite-mini", "--out", full);
        Assert.NotEqual(0, code);
        Assert.Equal($"error: --out: {full} is not empty", stderr.Trim());

        (code, _, stderr) = RunGrid("write-checkpoint", "--preset", "deepseek-v2-lite-mini", "--dtype", "int4", "--out", Path.Combine(_root, "y"));
        Assert.NotEqual(0, code);
        Assert.Equal("error: --dtype: 'int4' is not one of bf16, f16, f32", stderr.Trim());
    }

    [Fact]
    public void EachRoleLoadsOnlyItsWeights()
    {
        var dir = WriteMini("roles", 5);
        var c = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var groups = ExpertRange.Partition(c.NRoutedExperts, 4);
        int moeLayers = c.MoeLayers.Count();
        long d = c.HiddenSize, inter = c.MoeIntermediateSize;
        // int8: one byte per weight and a float32 scale per row and block of columns, for gate+up [2*inter, d] and down [d, inter].
        const int block = QuantizedMatrix.DefaultInt8BlockColumns;
        long ExpertBytes(int experts) => experts * moeLayers *
            (2 * inter * d + 2 * inter * ((d + block - 1) / block) * 4 + d * inter + d * ((inter + block - 1) / block) * 4);

        ModelLoadOptions Options(bool attention, params ExpertRange[] ranges) => new()
        {
            Quantization = WeightQuantization.Int8, LoadAttention = attention, ExpertRanges = ranges, CacheMaxBytes = 1 << 20,
        };
        using var group2 = DeepseekV2Model.Load(dir, Options(false, groups[2]));
        Assert.False(group2.HasAttention);
        Assert.Equal(0, group2.AttentionWeightBytes);
        Assert.Equal(ExpertBytes(groups[2].Count), group2.WeightBytesHeld);
        Assert.All(group2.LoadedTensors, name => Assert.Matches(@"\.mlp\.experts\.(\d+)\.", name));
        Assert.All(group2.LoadedTensors, name =>
            Assert.True(groups[2].Contains(int.Parse(System.Text.RegularExpressions.Regex.Match(name, @"experts\.(\d+)\.").Groups[1].Value)), name));
        Assert.Equal(moeLayers * groups[2].Count * 3, group2.LoadedTensors.Count);

        using var attentionOnly = DeepseekV2Model.Load(dir, Options(true));
        Assert.True(attentionOnly.HasAttention);
        Assert.Empty(attentionOnly.ExpertGroups);
        Assert.DoesNotContain(attentionOnly.LoadedTensors, name => name.Contains(".mlp.experts."));
        // Embedding in float32; every other matrix but the gates and kv_b 8-bit: well under the float32 size of the part.
        long attentionF32 = TensorNames.All(c).Where(s => s.Expert is null).Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b)) * 4;
        long embedF32 = (long)c.VocabSize * d * 4;
        Assert.True(attentionOnly.AttentionWeightBytes < embedF32 + (attentionF32 - embedF32) / 2,
            $"{attentionOnly.AttentionWeightBytes} bytes of {attentionF32} in float32");

        using var everything = DeepseekV2Model.Load(dir, Options(true, groups));
        Assert.Equal(attentionOnly.AttentionWeightBytes, everything.AttentionWeightBytes);
        Assert.Equal(everything.AttentionWeightBytes + ExpertBytes(c.NRoutedExperts), everything.WeightBytesHeld);
    }
}
