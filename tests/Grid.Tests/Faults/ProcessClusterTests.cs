using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// The harness itself, on what works without faults: real Redis, silo and gateway processes come up on their own
/// ports, streams carry every token id with its arrival time, concurrent streams equal their solo runs, and a
/// SIGKILL ends exactly the process it names.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class ProcessClusterTests(ITestOutputHelper output)
{
    [Fact]
    public async Task HarnessStartsAClusterStreamsAndKills()
    {
        var clock = Stopwatch.StartNew();
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 1);
        Log(output, $"cluster up in {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Contains("silo ready", cluster.LogTail("experts", 200));

        var specs = Specs(4, 48, seeded: false).Concat(Specs(2, 48, seeded: true, salt: 4)).ToArray();
        var t = Stopwatch.StartNew();
        var solo = await SoloAsync(cluster, gateway, specs);
        Log(output, $"{specs.Length} solo runs of {specs[0].MaxTokens} tokens in {t.Elapsed.TotalSeconds:F1} s");
        foreach (var s in solo)
        {
            Assert.Equal(s.Tokens.Length, s.ArrivalMs.Length);
            Assert.True(s.ArrivalMs.Zip(s.ArrivalMs.Skip(1)).All(p => p.First <= p.Second));
            Assert.True(s.LongestGapMs > 0);
        }
        // Distinct prompts give distinct outputs; a seeded request differs from the greedy one.
        Assert.Equal(specs.Length, solo.Select(s => string.Join(",", s.Tokens)).Distinct().Count());

        t.Restart();
        var streams = StreamClient.StartAll(gateway.Http, specs);
        await StreamClient.WaitAllTokensAsync(streams, 5, StateLimit);
        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        Log(output, $"{specs.Length} concurrent streams in {t.Elapsed.TotalSeconds:F1} s");
        AssertSameAsSolo(cluster, solo, runs, "concurrent streams");
        ReportGaps(output, "no fault", runs);

        int pid = cluster.Pid("experts");
        await cluster.Kill9Async("experts");
        Assert.False(cluster.IsRunning("experts"));
        Assert.Throws<ArgumentException>(() => Process.GetProcessById(pid));
        Assert.True(cluster.IsRunning("attention"));
        Assert.True(cluster.IsRunning("gateway"));
        Log(output, $"total {clock.Elapsed.TotalSeconds:F1} s");
    }
}
