using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// A gateway dies (SIGKILL) with 8 streams running: nothing releases their latent caches on the attention shard.
/// Another gateway on the same cluster serves correctly at once (sequence ids are unique across the cluster and
/// across gateway restarts, so its sequences never meet the orphans), and the orphaned caches are freed when the dead
/// gateway's lease expires (<c>Grid:Cluster:LeaseSeconds</c> = 5 on silos and gateways): the cluster's cache,
/// seen through the new gateway's GET /debug/cache, returns to 0 sequences and 0 tokens.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class GatewayKilledTests(ITestOutputHelper output)
{
    const int OrphanStreams = 8, Requests = 10, MaxTokens = 48, LeaseSeconds = 5;
    /// <summary>24 leases: generous for a loaded machine, short enough that a failure does not hold CI for long.</summary>
    static readonly TimeSpan CacheFreedLimit = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task AnotherGatewayServesAndTheDeadGatewaysCachesAreFreedByLeaseExpiry()
    {
        var lease = new Dictionary<string, string> { ["Grid__Cluster__LeaseSeconds"] = LeaseSeconds.ToString() };
        await using var cluster = NewCluster(output, commonEnv: lease);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        var a = await cluster.StartGatewayAsync("gatewayA", attentionShards: 1);

        // B's requests and their solo runs (through A, before anything fails).
        var specs = Specs(Requests / 2, MaxTokens, seeded: false).Concat(Specs(Requests - Requests / 2, MaxTokens, seeded: true, salt: Requests / 2)).ToArray();
        var solo = await SoloAsync(cluster, a, specs);

        // A serves 8 long streams; once each has 20+ tokens, A dies.
        var orphans = StreamClient.StartAll(a.Http, Specs(OrphanStreams, 2000, seeded: false, salt: 100));
        await StreamClient.WaitAllTokensAsync(orphans, 20, StateLimit);
        var before = JsonNode.Parse(await a.Http.GetStringAsync("/debug/cache"))!;
        Log(output, $"cache before the kill (through A): {before.ToJsonString()}");
        Assert.True(before["sequences"]!.GetValue<long>() >= OrphanStreams, before.ToJsonString());
        await cluster.Kill9Async("gatewayA");
        // Their clients see the connection end, not a hang.
        foreach (var o in await Task.WhenAll(orphans.Select(s => s.Completion)))
        {
            Assert.False(o.TimedOut, o.Describe());
            Assert.False(o.Complete, o.Describe());
        }

        var b = await cluster.StartGatewayAsync("gatewayB", attentionShards: 1);
        var runs = await Task.WhenAll(StreamClient.StartAll(b.Http, specs).Select(s => s.Completion));
        AssertSameAsSolo(cluster, solo, runs, "gateway B's first requests");

        // B's own sequences are released as they finish; A's orphans only by lease expiry. Wait for the state.
        var cache = await Poll.UntilAsync(async () => JsonNode.Parse(await b.Http.GetStringAsync("/debug/cache"))!,
            c => c["sequences"]!.GetValue<long>() == 0 && c["tokens"]!.GetValue<long>() == 0, CacheFreedLimit);
        Log(output, $"cache after B's requests (through B): {cache.ToJsonString()}");
        Assert.True(cache["sequences"]!.GetValue<long>() == 0 && cache["tokens"]!.GetValue<long>() == 0,
            $"the dead gateway's caches were not freed within {CacheFreedLimit.TotalSeconds:F0} s (lease {LeaseSeconds} s): {cache.ToJsonString()}\n{cluster.AllLogTails()}");
    }
}
