using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Weights;
using Xunit;
using static Grid.Tests.ModelTestKit;

namespace Grid.Tests;

public class LoaderErrorTests
{
    static string Lite => Golden.Dir("lite_f32");

    /// <summary>A cancelled load (a host stopping mid-load) ends at the next tensor, before the model is built.</summary>
    [Fact]
    public void CancelledLoadStopsAtTheNextTensor()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        int tensorsSeen = 0;
        var progress = new SynchronousProgress<Grid.ModelCore.Weights.LoadProgress>(_ => tensorsSeen++);
        Assert.ThrowsAny<OperationCanceledException>(() =>
            Grid.ModelCore.Model.DeepseekV2Model.Load(Golden.Dir("lite_f32"), new Grid.ModelCore.Model.ModelLoadOptions { Cancellation = cancelled.Token }, progress));
        Assert.Equal(1, tensorsSeen);
    }

    sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        var dir = Rewrite(Lite, "missing", StorageDtype.F32, 1, edit: t => t.RemoveAll(x => x.Name == "model.layers.1.mlp.experts.3.up_proj.weight"));
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("'model.layers.1.mlp.experts.3.up_proj.weight' not found", e.Message);
        Assert.Contains("[48, 128]", e.Message);
    }

    [Fact]
    public void MisShapedTensorNamesBothShapes()
    {
        var dir = Rewrite(Lite, "shape", StorageDtype.F32, 1, edit: t =>
        {
            int i = t.FindIndex(x => x.Name == "model.layers.0.self_attn.kv_b_proj.weight");
            t[i] = new TensorData(t[i].Name, [128, 16], () => new float[128 * 16]);
        });
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("'model.layers.0.self_attn.kv_b_proj.weight' has shape [128, 16] in the checkpoint but the config expects [256, 32]", e.Message);
    }

    [Fact]
    public void MissingShardIsNamed()
    {
        var dir = Rewrite(Golden.Dir("full_f32"), "shard", StorageDtype.F32, 3);
        File.Delete(Path.Combine(dir, "model-00002-of-00003.safetensors"));
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("shard model-00002-of-00003.safetensors not found", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
    }

    [Fact]
    public void TruncatedFileIsReported()
    {
        var dir = Rewrite(Lite, "trunc", StorageDtype.F32, 1);
        var path = Path.Combine(dir, "model.safetensors");
        using (var f = File.Open(path, FileMode.Open)) f.SetLength(f.Length - 1000);
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("file truncated?", e.Message);
    }

    [Fact]
    public void CorruptHeaderIsReported()
    {
        var dir = Rewrite(Lite, "header", StorageDtype.F32, 1);
        var path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        bytes[8] = (byte)'x';
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("header is not valid JSON", e.Message);
    }

    [Fact]
    public void UnsupportedDtypeIsNamed()
    {
        var dir = Rewrite(Lite, "dtype", StorageDtype.F32, 1);
        var path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        var text = System.Text.Encoding.ASCII.GetString(bytes, 8, (int)BitConverter.ToInt64(bytes, 0));
        int at = text.IndexOf("\"F32\"", StringComparison.Ordinal);
        System.Text.Encoding.ASCII.GetBytes("\"I32\"").CopyTo(bytes, 8 + at);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointException>(() => DeepseekV2Model.Load(dir));
        Assert.Contains("has dtype I32; supported: F32, F16, BF16", e.Message);
    }

    [Fact]
    public void MissingFolderAndFilesAreReported()
    {
        Assert.Contains("checkpoint folder not found", Assert.Throws<CheckpointException>(() => Checkpoint.Open("/nonexistent/grid")).Message);
        var empty = TempDir("empty");
        Assert.Contains("no model.safetensors", Assert.Throws<CheckpointException>(() => Checkpoint.Open(empty)).Message);
        Assert.Contains("config.json not found", Assert.Throws<ModelConfigException>(() => ModelConfig.Load(Path.Combine(empty, "config.json"))).Message);
    }

    static JsonObject LiteConfig() => JsonNode.Parse(File.ReadAllText(Path.Combine(Lite, "config.json")))!.AsObject();

    [Theory]
    [InlineData("scoring_func", "\"sigmoid\"", "scoring_func: 'sigmoid' is not supported")]
    [InlineData("topk_method", "\"noaux_tc\"", "topk_method: 'noaux_tc' is not supported")]
    [InlineData("model_type", "\"llama\"", "model_type: 'llama' is not supported")]
    [InlineData("hidden_act", "\"gelu\"", "hidden_act: 'gelu' is not supported")]
    [InlineData("hidden_size", "\"big\"", "hidden_size: expected an integer")]
    [InlineData("num_experts_per_tok", "9", "num_experts_per_tok: 9 must be in 1..n_routed_experts (8)")]
    [InlineData("rope_scaling", "{\"type\":\"dynamic\",\"factor\":2}", "rope_scaling.type: 'dynamic' is not supported")]
    public void UnsupportedConfigValuesNameTheKey(string key, string json, string message)
    {
        var config = LiteConfig();
        config[key] = JsonNode.Parse(json);
        var e = Assert.Throws<ModelConfigException>(() => ModelConfig.FromJson(config));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void MissingRequiredKeyIsNamed()
    {
        var config = LiteConfig();
        config.Remove("kv_lora_rank");
        Assert.Contains("kv_lora_rank: missing", Assert.Throws<ModelConfigException>(() => ModelConfig.FromJson(config)).Message);
    }

    [Fact]
    public void ConfigReadsEveryKey()
    {
        var full = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        Assert.Equal(96, full.QLoraRank);
        Assert.Equal("group_limited_greedy", full.TopkMethod);
        Assert.Equal((4, 2), (full.NGroup, full.TopkGroup));
        Assert.Equal(3.0, full.RoutedScalingFactor);
        Assert.Equal(24, full.VHeadDim);
        Assert.Equal(new RopeScaling("yarn", 40, 4096, 32, 1, 0.707, 0.707), full.RopeScaling);
        var lite = ModelConfig.Load(Path.Combine(Lite, "config.json"));
        Assert.Null(lite.QLoraRank);
        Assert.Equal(48, lite.LatentDim);
        Assert.Equal([1, 2], lite.MoeLayers);
    }
}
