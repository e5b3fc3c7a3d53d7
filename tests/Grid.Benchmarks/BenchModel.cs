using System.Text.Json.Nodes;
using Grid.ModelCore.Weights;

namespace Grid.Benchmarks;

/// <summary>The standard benchmark model (../shared/bench/mid/config.json), written once with the project's own checkpoint writer.</summary>
public static class BenchModel
{
    public static string SharedConfig()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var p = Path.Combine(dir.FullName, "shared", "bench", "mid", "config.json");
            if (File.Exists(p)) return p;
        }
        throw new FileNotFoundException("shared/bench/mid/config.json not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The folder of the mid checkpoint (float32 random weights + the built-in byte tokenizer), writing it on first use.</summary>
    public static string Ensure(Action<string> log)
    {
        var root = Environment.GetEnvironmentVariable("GRID_HOME")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "grid");
        var dir = Path.Combine(root, "bench-mid-v1");
        if (File.Exists(Path.Combine(dir, ".complete"))) return dir;
        log($"writing the benchmark checkpoint (537M parameters, float32) to {dir}");
        var tmp = dir + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        var config = JsonNode.Parse(File.ReadAllText(SharedConfig()))!.AsObject();
        RandomCheckpoint.Write(tmp, config, seed: 7, StorageDtype.F32, shards: 2, new Progress<string>(log));
        Grid.ModelCore.Tokenization.ByteTokenizer.Write(tmp);
        File.WriteAllText(Path.Combine(tmp, ".complete"), "");
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(tmp, dir);
        return dir;
    }
}
