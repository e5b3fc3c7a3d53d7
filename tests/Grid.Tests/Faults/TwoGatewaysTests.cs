using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// Two gateway processes on one cluster share its attention shard and expert groups: 8 streams through each at
/// once (greedy and seeded), all identical to their solo runs, and every cache released afterwards.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class TwoGatewaysTests(ITestOutputHelper output)
{
    const int PerGateway = 8, MaxTokens = 96;

    [Fact]
    public async Task StreamsThroughTwoGatewaysEqualTheirSoloRuns()
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        var one = await cluster.StartGatewayAsync("gateway1", attentionShards: 1);
        var two = await cluster.StartGatewayAsync("gateway2", attentionShards: 1);

        var specs = Specs(PerGateway, MaxTokens, seeded: false).Concat(Specs(PerGateway, MaxTokens, seeded: true, salt: PerGateway)).ToArray();
        var expected = await ReferencesAsync(output, cluster, one, specs);

        // Alternate: each gateway gets 4 greedy and 4 seeded streams.
        var streams = specs.Select((s, i) => CompletionStream.Start(i % 2 == 0 ? one.Http : two.Http, s)).ToArray();
        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        ReportGaps(output, "two gateways", runs);
        AssertSameAsSolo(cluster, expected, runs, "8 streams through each of two gateways");

        foreach (var g in new[] { one, two })
        {
            var cache = await Poll.UntilAsync(async () => JsonNode.Parse(await g.Http.GetStringAsync("/debug/cache"))!,
                c => c["sequences"]!.GetValue<long>() == 0, StateLimit);
            Assert.True(cache["sequences"]!.GetValue<long>() == 0 && cache["tokens"]!.GetValue<long>() == 0, $"{g.Name}: {cache.ToJsonString()}");
        }
    }
}
