using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// An attention silo dies (SIGKILL) while 16 streams run: the latent caches it held are gone, and the gateway, which
/// owns every sequence's prompt, generated tokens and seed, re-prefills the lost sequences on the surviving shard.
/// Clients see a pause, then the same tokens they would have had: every stream ends with finish_reason "length",
/// exactly max_tokens tokens, identical to its solo run: 16 greedy and 16 seeded (temperature 1) streams at once, so one
/// cluster and one kill cover both.
/// Cluster: two attention-only silos (2 shards), every expert group on a third silo that is never killed.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class AttentionSiloKilledTests(ITestOutputHelper output)
{
    const int Streams = 16, MaxTokens = 220, KillAfterTokens = 20;

    [Fact]
    public async Task EveryStreamFinishesIdenticalToItsSoloRun()
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention0", attention: true, groups: [], metrics: true);
        cluster.StartSilo("attention1", attention: true, groups: [], metrics: true);
        cluster.StartSilo("experts", attention: false, groups: AllGroups);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention0"), cluster.WaitSiloReadyAsync("attention1"), cluster.WaitSiloReadyAsync("experts"));
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 2);

        // Greedy and seeded interleaved, so the solo anchors (the first requests) cover both.
        var specs = Specs(Streams, MaxTokens, seeded: false).Zip(Specs(Streams, MaxTokens, seeded: true, salt: Streams), (g, t) => new[] { g, t })
            .SelectMany(p => p).ToArray();
        var expected = await ReferencesAsync(output, cluster, gateway, specs);

        var streams = StreamClient.StartAll(gateway.Http, specs);
        await StreamClient.WaitAllTokensAsync(streams, KillAfterTokens, StateLimit);
        // Kill an attention silo that holds sequences of this batch (shard i is placed on the i-th attention silo, so
        // normally each holds about half; should both shards have landed on one silo, that one is the victim).
        var held = new Dictionary<string, double?>();
        foreach (var name in new[] { "attention1", "attention0" }) held[name] = await cluster.SiloMetricAsync(name, "grid_silo_sequences");
        var victim = held.FirstOrDefault(h => h.Value > 0).Key ?? "attention1";
        Log(output, $"sequences held before the kill: {string.Join(", ", held.Select(h => $"{h.Key} {h.Value?.ToString() ?? "?"}"))}; " +
                    $"tokens per stream {string.Join(",", streams.Select(s => s.TokenCount))}; killing {victim}");
        await cluster.Kill9Async(victim);

        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        ReportGaps(output, $"greedy, {victim} killed", runs.Where((_, i) => i % 2 == 0).ToArray());
        ReportGaps(output, $"seeded, {victim} killed", runs.Where((_, i) => i % 2 == 1).ToArray());
        AssertSameAsSolo(cluster, expected, runs, $"{victim} killed after {KillAfterTokens}+ tokens per stream");

        // Only the victim's sequences were recomputed: the surviving shard's, whose step may have committed there when
        // the step failed as a whole, were rewound and stepped again, not refused and recomputed.
        var survivor = victim == "attention0" ? "attention1" : "attention0";
        var recomputed = await ProcessCluster.GatewayMetricAsync(gateway, "grid_recomputed_sequences_total");
        var rewound = await cluster.SiloMetricAsync(survivor, "grid_silo_caches_rewound_total");
        Log(output, $"recomputed {recomputed?.ToString() ?? "?"} sequences; {survivor} rewound {rewound?.ToString() ?? "?"} caches");
        Assert.NotNull(recomputed);
        if (held[victim] is { } lost) Assert.True(recomputed <= lost, $"{recomputed} sequences were recomputed, but {victim} held only {lost}\n{cluster.AllLogTails()}");
    }
}
