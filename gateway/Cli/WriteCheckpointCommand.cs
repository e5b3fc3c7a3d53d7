using System.CommandLine;
using System.Diagnostics;
using Grid.ModelCore.Weights;

namespace Grid.Gateway.Cli;

/// <summary>
/// <c>grid write-checkpoint</c>: a random-weight checkpoint of a known model shape (<see cref="RandomCheckpoint.Presets"/>)
/// in the Hugging Face layout, written by the project's own writer: config.json, shards with
/// model.safetensors.index.json, the byte tokenizer. Checks the folder and the free disk space before it starts.
/// </summary>
public static class WriteCheckpointCommand
{
    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Model shape: " + string.Join(", ", RandomCheckpoint.Presets.Keys), Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Storage dtype: bf16, f16 or f32", DefaultValueFactory = _ => "bf16" };
        var output = new Option<string>("--out") { Description = "Folder to write (created; must be empty)", Required = true };
        var seed = new Option<ulong>("--seed") { Description = "Random seed (same seed, same bytes)", DefaultValueFactory = _ => 20240507UL };
        var layers = new Option<int?>("--layers") { Description = "Override num_hidden_layers (a shorter model of the same shape)" };
        var shardMiB = new Option<int>("--shard-size-mib") { Description = "Approximate shard size", DefaultValueFactory = _ => 4096 };
        var cmd = new Command("write-checkpoint", "Write a random-weight checkpoint of a known model shape")
        {
            preset, dtype, output, seed, layers, shardMiB,
        };
        cmd.SetAction(parse =>
        {
            var name = parse.GetValue(preset)!;
            if (!RandomCheckpoint.Presets.TryGetValue(name, out var makeConfig))
                return Fail($"--preset: unknown preset '{name}' (known: {string.Join(", ", RandomCheckpoint.Presets.Keys)})");
            StorageDtype storage;
            switch (parse.GetValue(dtype))
            {
                case "bf16" or "bfloat16": storage = StorageDtype.BF16; break;
                case "f16" or "float16": storage = StorageDtype.F16; break;
                case "f32" or "float32": storage = StorageDtype.F32; break;
                default: return Fail($"--dtype: '{parse.GetValue(dtype)}' is not one of bf16, f16, f32");
            }
            var config = makeConfig();
            if (parse.GetValue(layers) is int n)
            {
                if (n < 1) return Fail("--layers must be at least 1");
                config["num_hidden_layers"] = n;
            }
            int shardSize = parse.GetValue(shardMiB);
            if (shardSize < 1) return Fail("--shard-size-mib must be at least 1");
            var dir = Path.GetFullPath(parse.GetValue(output)!);
            long weightBytes = RandomCheckpoint.WeightBytes(config, storage);
            if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
                return Fail($"--out: {dir} is not empty");
            try
            {
                Directory.CreateDirectory(dir);
                var probe = Path.Combine(dir, ".write-probe");
                File.WriteAllText(probe, "");
                File.Delete(probe);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
            {
                return Fail($"--out: cannot write to {dir} ({e.Message.Split('\n')[0]})");
            }
            long free = new DriveInfo(dir).AvailableFreeSpace;
            long needed = weightBytes + (64L << 20); // headers, index, tokenizer
            if (free < needed)
                return Fail($"not enough disk space in {dir}: the {name} checkpoint needs {Size(needed)}, {Size(free)} are free");
            Console.Error.WriteLine($"writing {name} ({storage}, {Size(weightBytes)} of weights, seed {parse.GetValue(seed)}) to {dir}");
            var clock = Stopwatch.StartNew();
            var report = new ByteProgress(weightBytes, clock);
            try
            {
                RandomCheckpoint.WriteFast(dir, config, parse.GetValue(seed), storage, (long)shardSize << 20, report);
            }
            catch (IOException e)
            {
                return Fail($"writing {dir} failed: {e.Message.Split('\n')[0]}");
            }
            var shards = Directory.GetFiles(dir, "*.safetensors").Length;
            Console.Error.WriteLine($"wrote {Size(weightBytes)} in {shards} shard(s) in {clock.Elapsed.TotalSeconds:F0} s ({weightBytes / Math.Max(1e-9, clock.Elapsed.TotalSeconds) / (1 << 20):F0} MiB/s)");
            Console.WriteLine(dir);
            return 0;
        });
        return cmd;
    }

    /// <summary>Bytes as GiB, or as MiB below 1 GiB.</summary>
    static string Size(long bytes) => bytes >= 1L << 30
        ? (bytes / (double)(1L << 30)).ToString("F1", System.Globalization.CultureInfo.InvariantCulture) + " GiB"
        : (bytes / (double)(1L << 20)).ToString("F1", System.Globalization.CultureInfo.InvariantCulture) + " MiB";

    static int Fail(string message)
    {
        Console.Error.WriteLine("error: " + message);
        return 2;
    }

    /// <summary>One progress line per 5% of the bytes (synchronous: reported on the writing thread, in order).</summary>
    sealed class ByteProgress(long total, Stopwatch clock) : IProgress<long>
    {
        long _done;
        int _lastStep = -1;

        public void Report(long bytes)
        {
            _done += bytes;
            int step = total == 0 ? 20 : (int)(20 * _done / total);
            if (step == _lastStep) return;
            _lastStep = step;
            Console.Error.WriteLine($"writing weights: {Size(_done)}/{Size(total)} ({100 * _done / Math.Max(1, total)}%), {clock.Elapsed.TotalSeconds:F0} s");
        }
    }
}
