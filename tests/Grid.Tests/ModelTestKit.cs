using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;

namespace Grid.Tests;

/// <summary>Helpers shared by model tests: run prompts, compare logits, rewrite checkpoints.</summary>
public static class ModelTestKit
{
    public static float[] Row(Tensor logits, int row) => logits[row].data<float>().ToArray();

    public static double MaxAbsDiff(float[] a, float[] b) => a.Select((x, i) => Math.Abs(x - (double)b[i])).Max();

    /// <summary>Prefills <paramref name="prompt"/> then greedily decodes <paramref name="steps"/> tokens; returns the logits of every step.</summary>
    public static List<float[]> Greedy(DeepseekV2Model model, int[] prompt, int steps, AttentionMode mode = AttentionMode.Auto)
    {
        var seq = model.Cache!.Create();
        var result = new List<float[]>();
        using (var o = model.Forward([new SequenceChunk(seq, prompt)], mode)) result.Add(Row(o.Logits, 0));
        for (int i = 1; i < steps; i++)
        {
            int next = Grid.ModelCore.Sampling.Sampler.Argmax(result[^1]);
            using var o = model.Forward([new SequenceChunk(seq, [next])], mode);
            result.Add(Row(o.Logits, 0));
        }
        model.Cache.Release(seq);
        return result;
    }

    /// <summary>Reads every tensor of a checkpoint as float32 values (optionally rounded through a storage dtype).</summary>
    public static List<TensorData> ReadAll(string directory, Func<float, float>? round = null)
    {
        var config = ModelConfig.Load(Path.Combine(directory, "config.json"));
        using var ckpt = Checkpoint.Open(directory);
        var list = new List<TensorData>();
        foreach (var spec in TensorNames.All(config))
        {
            using var t = ckpt.Load(spec.Name, spec.Shape, ScalarType.Float32);
            var values = t.data<float>().ToArray();
            if (round is not null) for (int i = 0; i < values.Length; i++) values[i] = round(values[i]);
            list.Add(new TensorData(spec.Name, spec.Shape, () => values));
        }
        return list;
    }

    public static float RoundBf16(float x) => SafetensorsWriter.FromBFloat16(SafetensorsWriter.ToBFloat16(x));
    public static float RoundF16(float x) => (float)(Half)x;

    /// <summary>Copies config and tokenizer files of <paramref name="source"/> next to freshly written weights.</summary>
    public static string Rewrite(string source, string name, StorageDtype dtype, int shards, Func<float, float>? round = null, Action<List<TensorData>>? edit = null)
    {
        var dir = TempDir(name);
        var tensors = ReadAll(source, round);
        edit?.Invoke(tensors);
        SafetensorsWriter.Write(dir, tensors, dtype, shards);
        foreach (var f in new[] { "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            if (File.Exists(Path.Combine(source, f))) File.Copy(Path.Combine(source, f), Path.Combine(dir, f), true);
        return dir;
    }

    public static string TempDir(string name)
    {
        var dir = Path.Combine(Path.GetTempPath(), "grid-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}
