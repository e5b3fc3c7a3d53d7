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
    public async Task WithElasticSiloStreamsFinishIdenticalToSolo()
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
        await cluster.Kill9Async("experts");
        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        ReportGaps(output, "experts killed, elastic silo present", runs);
        AssertSameAsSolo(cluster, expected, runs, "the expert silo killed with an elastic silo present");

        // And new requests are served (by the elastic silo).
        var after = await StreamClient.RunAsync(gateway.Http, specs[0]);
        AssertSameAsSolo(cluster, expected.Take(1).ToArray(), [after], "a new request after the kill");
    }

    [Fact]
    public async Task WithoutElasticSiloNewRequestsGet503UntilASiloServesTheGroupsAgain()
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 1);

        var specs = Specs(2, 48, seeded: false).Concat(Specs(1, 48, seeded: true, salt: 2)).ToArray();
        var solo = await SoloAsync(cluster, gateway, specs);

        var inFlight = StreamClient.StartAll(gateway.Http, Specs(4, 2000, seeded: false, salt: 50));
        await StreamClient.WaitAllTokensAsync(inFlight, KillAfterTokens, StateLimit);
        await cluster.Kill9Async("experts");

        // The streams in flight end (an error event, or whatever ends them), none hangs.
        foreach (var r in await Task.WhenAll(inFlight.Select(s => s.Completion)))
        {
            Log(output, "in flight: " + r.Describe());
            Assert.False(r.TimedOut, $"a stream in flight hung after its expert groups died: {r.Describe()}\n{cluster.AllLogTails()}");
            Assert.False(r.Complete, r.Describe());
        }

        // A new request: 503 expert_group_unavailable, naming the group.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (status, body) = await PostAsync(gateway, specs[0]);
        Log(output, $"new request after the kill: HTTP {(int)status} in {clock.ElapsedMilliseconds} ms: {body}");
        Assert.True(status == HttpStatusCode.ServiceUnavailable, $"expected 503, got {(int)status}: {body}\n{cluster.AllLogTails()}");
        var error = JsonNode.Parse(body)!["error"]!;
        Assert.Equal("expert_group_unavailable", error["code"]?.GetValue<string>());
        Assert.Matches("expert group [123]", error["message"]!.GetValue<string>());

        // A silo declaring the groups joins: requests succeed again (poll for that state), identical to solo.
        await cluster.StartSiloAsync("experts2", attention: false, groups: [1, 2, 3]);
        var first = await Poll.UntilAsync(() => StreamClient.RunAsync(gateway.Http, specs[0]), r => r.Status != 503, StateLimit);
        var rest = await Task.WhenAll(specs.Skip(1).Select(s => StreamClient.RunAsync(gateway.Http, s)));
        AssertSameAsSolo(cluster, solo, [first, .. rest], "requests after a silo declaring groups 1-3 joined");
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
