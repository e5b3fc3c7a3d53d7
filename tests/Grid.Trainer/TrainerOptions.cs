namespace Grid.Trainer;

/// <summary>The trainer's command line: <c>--name value</c> pairs, names as the properties in kebab case.</summary>
public sealed record TrainerOptions
{
    /// <summary>The checkpoint whose config.json, tokenizer and generation_config the trained model takes.</summary>
    public string Like { get; init; } = DefaultLike();
    public string Out { get; init; } = "trained_lite";
    public string CorpusDir { get; init; } = "/usr/share/common-licenses";
    public int Steps { get; init; } = 1200;
    public int Batch { get; init; } = 16;
    public int SequenceLength { get; init; } = 128;
    public double LearningRate { get; init; } = 3e-3;
    public double MinLearningRateRatio { get; init; } = 0.1;
    public int WarmupSteps { get; init; } = 50;
    public double WeightDecay { get; init; } = 0.1;
    public double ClipNorm { get; init; } = 1.0;
    public double InitializerRange { get; init; } = 0.02;
    public int Seed { get; init; } = 1234;
    public int Threads { get; init; } = 1;
    public int LogEvery { get; init; } = 25;
    public int EvalEvery { get; init; } = 100;

    public static TrainerOptions Parse(string[] args)
    {
        var o = new TrainerOptions();
        for (int i = 0; i < args.Length; i += 2)
        {
            if (i + 1 >= args.Length || !args[i].StartsWith("--")) throw new ArgumentException($"expected --name value at '{args[i]}'");
            string v = args[i + 1];
            o = args[i] switch
            {
                "--like" => o with { Like = v },
                "--out" => o with { Out = v },
                "--corpus-dir" => o with { CorpusDir = v },
                "--steps" => o with { Steps = int.Parse(v) },
                "--batch" => o with { Batch = int.Parse(v) },
                "--sequence-length" => o with { SequenceLength = int.Parse(v) },
                "--learning-rate" => o with { LearningRate = double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) },
                "--min-learning-rate-ratio" => o with { MinLearningRateRatio = double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) },
                "--warmup-steps" => o with { WarmupSteps = int.Parse(v) },
                "--weight-decay" => o with { WeightDecay = double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) },
                "--clip-norm" => o with { ClipNorm = double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) },
                "--initializer-range" => o with { InitializerRange = double.Parse(v, System.Globalization.CultureInfo.InvariantCulture) },
                "--seed" => o with { Seed = int.Parse(v) },
                "--threads" => o with { Threads = int.Parse(v) },
                "--log-every" => o with { LogEvery = int.Parse(v) },
                "--eval-every" => o with { EvalEvery = int.Parse(v) },
                _ => throw new ArgumentException($"unknown option {args[i]}"),
            };
        }
        return o;
    }

    /// <summary>shared/golden/lite_f32 in the nearest folder above the working directory that has one.</summary>
    static string DefaultLike()
    {
        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "golden", "lite_f32");
            if (Directory.Exists(candidate)) return candidate;
        }
        return "lite_f32";
    }
}
