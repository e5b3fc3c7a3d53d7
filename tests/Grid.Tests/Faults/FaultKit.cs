using Xunit;
using Xunit.Abstractions;

namespace Grid.Tests.Faults;

/// <summary>What the fault tests share: the model, the requests, and assertions that explain themselves.</summary>
public static class FaultKit
{
    /// <summary>The tiny golden checkpoint (16 routed experts): 4 expert groups of 4 experts.</summary>
    public static string Model => Golden.Dir("full_f32");
    public const int ExpertGroups = 4;
    public static readonly int[] AllGroups = [0, 1, 2, 3];

    /// <summary>A state a test waits for (tokens flowing, a stream ending, caches freed) may take this long on a loaded machine.</summary>
    public static readonly TimeSpan StateLimit = TimeSpan.FromSeconds(180);

    public static ProcessCluster NewCluster(ITestOutputHelper output, IDictionary<string, string>? commonEnv = null) =>
        new(Model, ExpertGroups, commonEnv, line => Log(output, line));

    /// <summary><paramref name="count"/> distinct prompts; greedy, or seeded sampling (temperature 1, a seed per request).</summary>
    public static CompletionSpec[] Specs(int count, int maxTokens, bool seeded, int salt = 0) =>
        StreamClient.DistinctPrompts(count + salt).Skip(salt)
            .Select((p, i) => seeded ? new CompletionSpec(p, maxTokens, 1.0, 7_000 + salt + i) : new CompletionSpec(p, maxTokens))
            .ToArray();

    /// <summary>Solo references: each request alone, one after another; each must be complete.</summary>
    public static async Task<StreamResult[]> SoloAsync(ProcessCluster cluster, GatewayHandle gateway, IEnumerable<CompletionSpec> specs)
    {
        var solo = await StreamClient.SoloAsync(gateway.Http, specs);
        foreach (var s in solo) Assert.True(s.Complete, $"solo run failed: {s.Describe()}\n{cluster.AllLogTails()}");
        return solo;
    }

    /// <summary>
    /// Solo runs of the first requests anchor the references: 2 by default (GRID_FAULTS_SOLO=N for more, "all" for
    /// every request). One at a time through the grid, 16 x 220 tokens take minutes on 2 cores, so the rest come
    /// from one unfaulted concurrent run of all of them, which must equal the solo runs where both exist (the grid's
    /// output does not depend on what else runs, as the HTTP and grid tests show; this re-checks it here).
    /// </summary>
    public static int SoloAnchors(int requests) => Environment.GetEnvironmentVariable("GRID_FAULTS_SOLO") switch
    {
        "all" => requests,
        { } n when int.TryParse(n, out var k) && k > 0 => Math.Min(k, requests),
        _ => Math.Min(2, requests),
    };

    /// <summary>What each request must produce under faults: its solo run (see <see cref="SoloAnchors"/>), all complete.</summary>
    public static async Task<StreamResult[]> ReferencesAsync(ITestOutputHelper output, ProcessCluster cluster, GatewayHandle gateway, CompletionSpec[] specs)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int anchors = SoloAnchors(specs.Length);
        var solo = await SoloAsync(cluster, gateway, specs.Take(anchors));
        Log(output, $"references: {anchors} solo runs of {specs[0].MaxTokens} tokens in {clock.Elapsed.TotalSeconds:F1} s");
        if (anchors == specs.Length) return solo;
        clock.Restart();
        var streams = StreamClient.StartAll(gateway.Http, specs);
        var together = await Task.WhenAll(streams.Select(s => s.Completion));
        AssertSameAsSolo(cluster, solo, together.Take(anchors).ToArray(), "unfaulted concurrent run vs solo runs");
        foreach (var r in together) Assert.True(r.Complete, $"unfaulted run failed: {r.Describe()}\n{cluster.AllLogTails()}");
        Log(output, $"references: {specs.Length} concurrent unfaulted streams in {clock.Elapsed.TotalSeconds:F1} s, equal to the solo runs");
        ReportGaps(output, "unfaulted", together);
        return together;
    }

    /// <summary>Every run complete (finish_reason length, exactly max_tokens tokens) and token for token its solo run.</summary>
    public static void AssertSameAsSolo(ProcessCluster cluster, IReadOnlyList<StreamResult> solo, IReadOnlyList<StreamResult> runs, string what)
    {
        var problems = StreamClient.Mismatches(solo, runs);
        Assert.True(problems.Count == 0,
            $"{what}: {problems.Count} of {runs.Count} streams differ from their solo runs:\n{string.Join("\n", problems)}\n{cluster.AllLogTails()}");
    }

    /// <summary>Writes p50 and max of each stream's longest inter-token gap (the pause a client saw) to the test output.</summary>
    public static void ReportGaps(ITestOutputHelper output, string what, IReadOnlyList<StreamResult> runs)
    {
        var gaps = runs.Select(r => r.LongestGapMs).ToArray();
        int incomplete = runs.Count(r => !r.Complete);
        Log(output, $"{what}: longest inter-token gap per stream p50 {StreamClient.Percentile(gaps, 50):F0} ms, max {gaps.DefaultIfEmpty(double.NaN).Max():F0} ms " +
                    $"(streams: {string.Join(", ", gaps.Select(g => g.ToString("F0")))})" +
                    (incomplete > 0 ? $"; {incomplete} of {runs.Count} streams did not complete (their gaps end at their last token)" : ""));
    }

    public static void Log(ITestOutputHelper output, string line)
    {
        try { output.WriteLine($"[{DateTime.UtcNow:HH:mm:ss.fff}] {line}"); }
        catch (InvalidOperationException) { }   // after the test ended (a late log line)
    }
}

/// <summary>
/// The fault tests run one at a time and alone: each starts 3-5 real processes, and on a 2-core machine a parallel
/// neighbour would starve them into missed membership probes (a silo declared dead that is not).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FaultsCollection
{
    public const string Name = "Faults (real processes)";
}
