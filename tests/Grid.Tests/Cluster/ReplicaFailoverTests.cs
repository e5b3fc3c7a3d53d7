using Grid.Configuration;
using Grid.Gateway.Orchestration;
using Grid.Grains;
using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.ModelCore.Config;
using Microsoft.Extensions.Logging.Abstractions;
using Orleans.TestingHost;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// Replicas: two silos declare expert groups 1-3. When the silo running group 1 leaves the cluster, the groups it
/// ran re-activate on the other declaring silo and generation goes on with identical output.
/// </summary>
public sealed class ReplicaFailoverTests : IAsyncLifetime
{
    // silo 0: attention + group 0; silos 1 and 2 both declare groups 1, 2 and 3 (replicas of each other).
    static readonly int[][] GroupsOfSilo = [[0], [1, 2, 3], [1, 2, 3]];
    TestCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await TestSilo.StartClusterAsync<Configurator>("grid-replicas");

    public Task DisposeAsync() => TestSilo.StopClusterAsync(_cluster);

    sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder silo) => TestSilo.AddGridSilo(silo, 4, index => new SiloOptions { Attention = index == 0, ExpertGroups = GroupsOfSilo[index] });
    }

    [Fact]
    public async Task ExpertGroupMovesToItsReplicaWhenItsSiloLeaves()
    {
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        var executor = new GridStepExecutor(_cluster.Client, config, new GridTopology { ExpertGroups = 4, CallTimeout = TimeSpan.FromSeconds(10) },
            NullLogger<GridStepExecutor>.Instance);
        await Poll.UntilAsync(async () => (await executor.GetReadinessAsync(CancellationToken.None)).Ready, "the replica cluster did not load its weights");
        var expected = Golden.Load("full_f32", "text");

        var before = await GridClusterTestsBase<FullCluster>.GreedyAsync(executor, 1, expected.PromptIds, 16);
        Assert.Equal(expected.GeneratedIds, before.Tokens);

        // Where does group 1 run now? Stop that silo (never the attention silo: silo 0 declares no replica of 1).
        var host = (await _cluster.Client.GetGrain<IExpertGroupGrain>(1).GetStatusAsync()).Silo;
        var silo = _cluster.Silos.Single(s => s.SiloAddress.ToString() == host);
        Assert.NotEqual(_cluster.Primary, silo);
        await _cluster.StopSiloAsync(silo);
        var after = await GridClusterTestsBase<FullCluster>.GreedyAsync(executor, 2, expected.PromptIds, 16);
        Assert.Equal(expected.GeneratedIds, after.Tokens);
        var moved = (await _cluster.Client.GetGrain<IExpertGroupGrain>(1).GetStatusAsync()).Silo;
        Assert.NotEqual(host, moved);
        Assert.True((await _cluster.Client.GetGrain<IExpertGroupGrain>(1).GetStatusAsync()).Ready);
    }
}
