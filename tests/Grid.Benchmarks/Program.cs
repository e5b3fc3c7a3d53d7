using System.CommandLine;
using System.Diagnostics;
using Grid.Benchmarks;

var quickOption = new Option<bool>("--quick") { Description = "Short run (under 5 minutes on 2 cores): fewer batch sizes, steps, contexts and request rates" };
var outOption = new Option<string?>("--out") { Description = "Output folder for latest.json and latest.md (default: bench-results at the repository root)" };
var sectionsOption = new Option<string?>("--sections") { Description = $"Comma-separated subset of: {string.Join(",", Sections.Names)}" };
var root = new RootCommand("Grid benchmarks: kernel efficiency, MLA, grid overhead, HTTP serving, routing and recovery from a killed silo on this machine")
{
    quickOption, outOption, sectionsOption,
};
root.SetAction(async (parse, ct) =>
{
    var total = Stopwatch.StartNew();
    void Log(string m) => Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss} +{total.Elapsed.TotalSeconds,5:F0}s] {m}");
    bool quick = parse.GetValue(quickOption);
    var selected = (parse.GetValue(sectionsOption) ?? string.Join(",", Sections.Names))
        .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
    if (selected.FirstOrDefault(s => !Sections.Names.Contains(s)) is { } unknown)
    {
        Console.Error.WriteLine($"error: unknown section '{unknown}' (sections: {string.Join(", ", Sections.Names)})");
        return 2;
    }
    var repoRoot = BenchContext.FindRepoRoot();
    var outDir = Path.GetFullPath(parse.GetValue(outOption) ?? Path.Combine(repoRoot, "bench-results"));

    var report = new Report();
    report.DescribeMachine(repoRoot);
    report.Options["quick"] = quick;
    report.Options["sections"] = string.Join(",", selected);
    Log($"Grid benchmark ({(quick ? "quick" : "full")}): sections {string.Join(", ", selected)}; results to {outDir}");

    using var context = new BenchContext
    {
        Quick = quick,
        ModelDir = BenchModel.Ensure(Log),
        RepoRoot = repoRoot,
        BuildConfig = BenchContext.OwnBuildConfig(),
        Log = Log,
    };
    report.Options["model"] = context.ModelDir;
    report.Options["build"] = context.BuildConfig;
    foreach (var name in Sections.Names.Where(selected.Contains))
    {
        ct.ThrowIfCancellationRequested();
        Log($"== {name}");
        var sw = Stopwatch.StartNew();
        Section section;
        try
        {
            section = await Sections.Run(name, context, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Log($"{name} failed: {e}");
            section = new Section(name, name) { Error = e.GetType().Name + ": " + e.Message.Split('\n')[0] };
        }
        section.Seconds = sw.Elapsed.TotalSeconds;
        report.Add(section);
        Log($"== {name} done in {section.Seconds:F0} s");
        report.Write(outDir); // after every section, so an interrupted run keeps what it measured
    }
    var (json, md) = report.Write(outDir);
    Log($"wrote {json} and {md} in {total.Elapsed.TotalSeconds:F0} s");
    Console.WriteLine(File.ReadAllText(md));
    return 0;
});
return await root.Parse(args).InvokeAsync();

namespace Grid.Benchmarks
{
    /// <summary>The report's sections, in run order.</summary>
    public static class Sections
    {
        public static readonly string[] Names = ["kernel", "gemm", "prefill", "decode", "quant", "quantkernel", "llamacpp", "mla", "routing", "structured", "prefix", "grid", "serving", "recovery"];

        public static Task<Section> Run(string name, BenchContext c, CancellationToken ct) => name switch
        {
            "kernel" => OnOwnThread(() => KernelBench.Run(c)),
            "gemm" => OnOwnThread(() => KernelBench.RunGemm(c)),
            "prefill" => OnOwnThread(() => PrefillBench.Run(c)),
            "decode" => OnOwnThread(() => DecodeStepBench.Run(c)),
            "llamacpp" => OnOwnThread(() => LlamaCppBench.Run(c)),
            "quant" => OnOwnThread(() => QuantBench.Run(c)),
            "quantkernel" => OnOwnThread(() => QuantKernelBench.Run(c)),
            "mla" => OnOwnThread(() => MlaBench.Run(c)),
            "routing" => OnOwnThread(() => RoutingBench.Run(c)),
            "structured" => Task.Run(() => StructuredBench.Run(c)),
            "prefix" => ReleasingModel(c, () => PrefixBench.RunAsync(c, ct)),
            "grid" => ReleasingModel(c, () => GridOverheadBench.RunAsync(c, ct)),
            "serving" => ReleasingModel(c, () => ServingBench.RunAsync(c, ct)),
            "recovery" => ReleasingModel(c, () => RecoveryBench.RunAsync(c, ct)),
            _ => throw new ArgumentException($"unknown section {name}"),
        };

        /// <summary>In-process model-core work runs synchronously under no_grad on one thread (grad mode is thread-local).</summary>
        static Task<Section> OnOwnThread(Func<Section> work) => Task.Run(() =>
        {
            using var noGrad = TorchSharp.torch.no_grad();
            return work();
        });

        /// <summary>Sections that load the model elsewhere (grains, other processes) free this process's copy first.</summary>
        static Task<Section> ReleasingModel(BenchContext c, Func<Task<Section>> work)
        {
            c.ReleaseModel();
            return work();
        }
    }
}
