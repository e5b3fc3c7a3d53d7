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
