using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// The only silo serving expert groups 1-3 dies (SIGKILL). With an elastic silo in the cluster (it may serve any
/// group, loading it on demand) the groups move there and the running streams finish identical to their solo runs.
/// Without one, nothing can serve the groups: a new request is refused at once with 503
/// <c>expert_group_unavailable</c> naming the group, the streams in flight end (an error event, not a hang), and
/// once a silo declaring those groups joins, requests succeed and match their solo runs again.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class ExpertSiloKilledTests(ITestOutputHelper output)
{
    const int Streams = 8, MaxTokens = 160, KillAfterTokens = 20;

    [Fact]
    public Task WithElasticSiloStreamsFinishIdenticalToSolo() =>
        ExpertSiloFailsWithElasticSiloAsync("killed", cluster => cluster.Kill9Async("experts"));

    /// <summary>
    /// The expert silo freezes instead (SIGSTOP: its sockets stay open, nothing answers). The attention shard walks each
    /// whole step in one gateway call and is waiting on the frozen silo's groups inside it; membership votes the silo
    /// dead, the gateway interrupts the step, the groups re-activate on the elastic silo, and every stream finishes
    /// identical to its solo run.
    /// </summary>
    [Fact]
    public Task FrozenExpertSiloWithElasticSiloStreamsFinishIdenticalToSolo() =>
        ExpertSiloFailsWithElasticSiloAsync("frozen", cluster => { cluster.Freeze("experts"); return Task.CompletedTask; });

    /// <summary>
    /// Attention + group 0, the only silo of groups 1-3, an elastic silo: streams run, the expert silo fails, all finish
    /// as solo, and a new request after it too.
    /// </summary>
    async Task ExpertSiloFailsWithElasticSiloAsync(string how, Func<ProcessCluster, Task> fail)
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        cluster.StartSilo("elastic", attention: false, groups: [], elastic: true);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"), cluster.WaitSiloReadyAsync("elastic"));
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 1);

        var specs = Specs(Streams / 2, MaxTokens, seeded: false).Concat(Specs(Streams / 2, MaxTokens, seeded: true, salt: Streams / 2)).ToArray();
        var expected = await ReferencesAsync(output, cluster, gateway, specs);

        var streams = StreamClient.StartAll(gateway.Http, specs);
        await StreamClient.WaitAllTokensAsync(streams, KillAfterTokens, StateLimit);
        await fail(cluster);
        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        ReportGaps(output, $"experts {how}, elastic silo present", runs);
        AssertSameAsSolo(cluster, expected, runs, $"the expert silo {how} with an elastic silo present");

        // And new requests are served (by the elastic silo).
        var after = await StreamClient.RunAsync(gateway.Http, specs[0]);
        AssertSameAsSolo(cluster, expected.Take(1).ToArray(), [after], $"a new request after the expert silo {how}");
    }

    /// <summary>
    /// Also the probes: every silo answers /health and /ready on its metrics port (200 once it is an active member with
    /// its model part loaded); the gateway's /ready turns 503 <c>expert_group_unavailable</c> before a 15 s deadline
    /// from the kill (polled), and 200 again once a silo serving the groups joined.
    /// </summary>
    [Fact]
    public async Task WithoutElasticSiloNewRequestsGet503UntilASiloServesTheGroupsAgain()
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0], metrics: true);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3], metrics: true);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        foreach (var silo in new[] { "attention", "experts" }) await AssertSiloProbesAsync(cluster, silo);
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 1);
        Assert.Equal(HttpStatusCode.OK, (await gateway.Http.GetAsync("/ready")).StatusCode);

        var specs = Specs(2, 48, seeded: false).Concat(Specs(1, 48, seeded: true, salt: 2)).ToArray();
        var solo = await SoloAsync(cluster, gateway, specs);

        var inFlight = StreamClient.StartAll(gateway.Http, Specs(4, 2000, seeded: false, salt: 50));
        await StreamClient.WaitAllTokensAsync(inFlight, KillAfterTokens, StateLimit);
        var sinceKill = System.Diagnostics.Stopwatch.StartNew();
        await cluster.Kill9Async("experts");
        // /ready turns 503 (membership lost the groups' only silo): polled, the state change timed from the kill.
        var notReady = Poll.UntilAsync(() => ReadyAsync(gateway), r => r.Status == HttpStatusCode.ServiceUnavailable, StateLimit)
            .ContinueWith(t => (Ready: t.Result, After: sinceKill.Elapsed), TaskScheduler.Default);

        // The streams in flight end (an error event, or whatever ends them), none hangs.
        foreach (var r in await Task.WhenAll(inFlight.Select(s => s.Completion)))
        {
            Log(output, "in flight: " + r.Describe());
            Assert.False(r.TimedOut, $"a stream in flight hung after its expert groups died: {r.Describe()}\n{cluster.AllLogTails()}");
            Assert.False(r.Complete, r.Describe());
        }

        var (readyAfterKill, after) = await notReady;
        Log(output, $"gateway /ready after the kill: HTTP {(int)readyAfterKill.Status} after {after.TotalSeconds:F1} s: {readyAfterKill.Body}");
        Assert.True(readyAfterKill.Status == HttpStatusCode.ServiceUnavailable, $"/ready stayed {(int)readyAfterKill.Status}\n{cluster.AllLogTails()}");
        Assert.True(after < TimeSpan.FromSeconds(15), $"/ready turned 503 only {after.TotalSeconds:F1} s after the kill (deadline 15 s)");
        Assert.Equal("expert_group_unavailable", JsonNode.Parse(readyAfterKill.Body)!["error"]!["code"]!.GetValue<string>());

        // A new request: 503 expert_group_unavailable, naming the group.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (status, body) = await PostAsync(gateway, specs[0]);
        Log(output, $"new request after the kill: HTTP {(int)status} in {clock.ElapsedMilliseconds} ms: {body}");
        Assert.True(status == HttpStatusCode.ServiceUnavailable, $"expected 503, got {(int)status}: {body}\n{cluster.AllLogTails()}");
        var error = JsonNode.Parse(body)!["error"]!;
        Assert.Equal("expert_group_unavailable", error["code"]?.GetValue<string>());
        Assert.Matches("expert group [123]", error["message"]!.GetValue<string>());

        // A silo declaring the groups joins: requests succeed again (poll for that state), identical to solo.
        await cluster.StartSiloAsync("experts2", attention: false, groups: [1, 2, 3], metrics: true);
        await AssertSiloProbesAsync(cluster, "experts2");
        var readyAgain = await Poll.UntilAsync(() => ReadyAsync(gateway), r => r.Status == HttpStatusCode.OK, StateLimit);
        Assert.True(readyAgain.Status == HttpStatusCode.OK, $"/ready did not turn 200 after experts2 joined: {readyAgain.Body}\n{cluster.AllLogTails()}");
        Assert.Equal("ready", JsonNode.Parse(readyAgain.Body)!["status"]!.GetValue<string>());
        var first = await Poll.UntilAsync(() => StreamClient.RunAsync(gateway.Http, specs[0]), r => r.Status != 503, StateLimit);
        var rest = await Task.WhenAll(specs.Skip(1).Select(s => StreamClient.RunAsync(gateway.Http, s)));
        AssertSameAsSolo(cluster, solo, [first, .. rest], "requests after a silo declaring groups 1-3 joined");
    }

    /// <summary>GET /ready on the gateway: its status and body.</summary>
    static async Task<(HttpStatusCode Status, string Body)> ReadyAsync(GatewayHandle gateway)
    {
        using var response = await gateway.Http.GetAsync("/ready");
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    /// <summary>
    /// A silo's probes on its metrics port: /health 200, and /ready 200 (polled: it logged "ready" when its weights were
    /// loaded; Active membership may follow a moment later) with the model-part and membership checks healthy.
    /// </summary>
    static async Task AssertSiloProbesAsync(ProcessCluster cluster, string name)
    {
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{cluster.Silo(name).MetricsPort}"), Timeout = TimeSpan.FromSeconds(30) };
        using var health = await http.GetAsync("/health");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Equal("healthy", JsonNode.Parse(await health.Content.ReadAsStringAsync())!["status"]!.GetValue<string>());
        var (status, body) = await Poll.UntilAsync(async () =>
        {
            using var r = await http.GetAsync("/ready");
            return (r.StatusCode, await r.Content.ReadAsStringAsync());
        }, r => r.StatusCode == HttpStatusCode.OK, StateLimit);
        Assert.True(status == HttpStatusCode.OK, $"silo {name} /ready: {(int)status} {body}");
        var checks = JsonNode.Parse(body)!["checks"]!;
        Assert.Equal("healthy", checks["model_part"]!["status"]!.GetValue<string>());
        Assert.Equal("healthy", checks["membership"]!["status"]!.GetValue<string>());
        Assert.Contains("active cluster member", checks["membership"]!["description"]!.GetValue<string>());
        // The metrics endpoint shares the port.
        Assert.Contains("grid_silo_latent_cache_reserved_bytes", await http.GetStringAsync("/metrics"));
    }

    /// <summary>A non-streamed completion: its status and body.</summary>
    static async Task<(HttpStatusCode Status, string Body)> PostAsync(GatewayHandle gateway, CompletionSpec spec)
    {
        var body = spec.Body();
        body["stream"] = false;
        using var response = await gateway.Http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }
}
