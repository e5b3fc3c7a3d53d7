using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// Redis, which holds the Orleans membership table, dies (SIGKILL) mid-stream and a fresh, empty one comes back on
/// the same port: the silos and the gateway carry on, the streams finish identical to their solo runs, and a new
/// request afterwards is served. The membership is rebuilt in the new Redis (the silos re-register): a gateway
/// started after the restart finds the silos, becomes ready and serves the same tokens.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class RedisRestartedTests(ITestOutputHelper output)
{
    const int Streams = 4, MaxTokens = 160, KillAfterTokens = 20;

    [Fact]
    public async Task StreamsFinishAndNewRequestsAreServedAfterRedisRestarts()
    {
        await using var cluster = NewCluster(output);
        await cluster.StartRedisAsync();
        cluster.StartSilo("attention", attention: true, groups: [0]);
        cluster.StartSilo("experts", attention: false, groups: [1, 2, 3]);
        await Task.WhenAll(cluster.WaitSiloReadyAsync("attention"), cluster.WaitSiloReadyAsync("experts"));
        var gateway = await cluster.StartGatewayAsync("gateway", attentionShards: 1);

        var specs = Specs(Streams / 2, MaxTokens, seeded: false).Concat(Specs(Streams / 2, MaxTokens, seeded: true, salt: Streams / 2)).ToArray();
        var expected = await ReferencesAsync(output, cluster, gateway, specs);

        var streams = StreamClient.StartAll(gateway.Http, specs);
        await StreamClient.WaitAllTokensAsync(streams, KillAfterTokens, StateLimit);
        await cluster.RestartRedisAsync();
        var runs = await Task.WhenAll(streams.Select(s => s.Completion));
        ReportGaps(output, "redis restarted", runs);
        AssertSameAsSolo(cluster, expected, runs, "streams across a Redis restart");

        var after = await StreamClient.RunAsync(gateway.Http, specs[0]);
        AssertSameAsSolo(cluster, expected.Take(1).ToArray(), [after], "a new request after the Redis restart");
        Assert.True(cluster.IsRunning("attention") && cluster.IsRunning("experts") && cluster.IsRunning("gateway"),
            "a process exited after the Redis restart\n" + cluster.AllLogTails());

        var late = await cluster.StartGatewayAsync("gatewayAfterRestart", attentionShards: 1);
        var fromLate = await StreamClient.RunAsync(late.Http, specs[1]);
        AssertSameAsSolo(cluster, expected.Skip(1).Take(1).ToArray(), [fromLate], "a gateway started after the Redis restart");
    }
}
