using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Grid.Tests.Cluster;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// The Grafana dashboards query only metric names a gateway really exports (names as Prometheus sees them: counters
/// with <c>_total</c>, histograms with the unit suffix and <c>_bucket</c>). The test server runs the embedded grid,
/// so the silo's series are on its /metrics too.
/// </summary>
[Collection(HttpCollection.Name)]
public sealed partial class DashboardMetricsTests(LiteServer lite)
{
    [GeneratedRegex(@"\bgrid_[a-z0-9_]+")]
    private static partial Regex GridMetric();

    static IEnumerable<string> Expressions(JsonNode? node) => node switch
    {
        JsonObject o => o.SelectMany(p => p.Key == "expr" && p.Value is JsonValue v && v.TryGetValue<string>(out var e) ? [e] : Expressions(p.Value)),
        JsonArray a => a.SelectMany(Expressions),
        _ => [],
    };

    async Task<HashSet<string>> ExportedAsync()
    {
        var text = await lite.Http.GetStringAsync(lite.BaseUrl + "/metrics");
        return text.Split('\n').Where(l => l.Length > 0 && !l.StartsWith('#')).Select(l => l[..l.IndexOfAny(['{', ' '])]).ToHashSet();
    }

    /// <summary><c>grid_*</c> names in a Markdown file, brace lists expanded (<c>grid_x_{a,b}</c>: <c>grid_x_a</c>, <c>grid_x_b</c>).</summary>
    static IEnumerable<string> DocumentedNames(string markdown) =>
        DocumentedMetric().Matches(markdown).SelectMany(m => m.Groups[2].Success
            ? m.Groups[2].Value.Split(',').Select(part => m.Groups[1].Value + part + m.Groups[3].Value)
            : [m.Groups[1].Value]);

    [GeneratedRegex(@"\b(grid_[a-z0-9_]*)(?:\{([a-z0-9_,]+)\}([a-z0-9_]*))?")]
    private static partial Regex DocumentedMetric();

    /// <summary>
    /// Every metric the README and the HTTP reference name is on a live scrape: counters with <c>_total</c>, histograms
    /// by their base name (exported as <c>_bucket</c>/<c>_sum</c>/<c>_count</c>) or one of those series.
    /// </summary>
    [Fact]
    public async Task EveryMetricTheDocsNameIsExported()
    {
        var root = LoopbackClusterTests.RepoRoot();
        var documented = new[] { "README.md", Path.Combine("docs", "http-api.md") }
            .SelectMany(f => DocumentedNames(File.ReadAllText(Path.Combine(root, f)))).ToHashSet();
        Assert.Contains("grid_request_queue_time_seconds", documented);   // the vLLM set is documented
        Assert.Contains("grid_silo_latent_cache_reserved_bytes", documented);   // brace lists are expanded
        static bool Exported(HashSet<string> names, string name) => names.Contains(name) || names.Contains(name + "_bucket");

        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(Golden.Load("lite_f32", "ids").PromptIds)), ("max_tokens", 5),
            ("temperature", 0), ("ignore_eos", true), ("stream", true));
        var (_, done) = await lite.StreamAsync("/v1/completions", body);
        Assert.True(done);
        var exported = await Poll.UntilAsync(ExportedAsync, names => documented.All(n => Exported(names, n)), TimeSpan.FromMinutes(1));
        Assert.Empty(documented.Where(n => !Exported(exported, n)).Order());
        // The finished request was counted by its finish reason (vLLM's request_success_total{finished_reason}).
        var text = await lite.Http.GetStringAsync(lite.BaseUrl + "/metrics");
        Assert.Contains(text.Split('\n'), l => l.StartsWith("grid_request_success_total{", StringComparison.Ordinal) && l.Contains("finish_reason=\"length\"", StringComparison.Ordinal));
    }

    [Fact]
    public async Task EveryMetricTheGrafanaDashboardsQueryIsExported()
    {
        var dashboards = Directory.GetFiles(Path.Combine(LoopbackClusterTests.RepoRoot(), "deploy", "grafana"), "*.json");
        Assert.NotEmpty(dashboards);
        var queried = dashboards.SelectMany(f => Expressions(JsonNode.Parse(File.ReadAllText(f))))
            .SelectMany(e => GridMetric().Matches(e).Select(m => m.Value)).ToHashSet();
        Assert.NotEmpty(queried);

        // Counters and histograms appear on first use: a streamed completion of several tokens uses them all.
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(Golden.Load("lite_f32", "ids").PromptIds)), ("max_tokens", 8),
            ("temperature", 0), ("ignore_eos", true), ("stream", true));
        var (_, done) = await lite.StreamAsync("/v1/completions", body);
        Assert.True(done);
        // The request counter is added once the response has gone out: wait for the state, not a time (a minute: a
        // misspelt name never appears, and the test should say so without waiting the default five).
        var exported = await Poll.UntilAsync(ExportedAsync, names => queried.IsSubsetOf(names), TimeSpan.FromMinutes(1));
        Assert.Empty(queried.Except(exported).Order());
    }
}
