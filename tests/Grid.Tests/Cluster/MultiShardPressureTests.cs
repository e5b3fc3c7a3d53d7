using Grid.Configuration;
using Grid.Gateway.Orchestration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.Grains.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Orleans.TestingHost;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// Two attention shards under memory pressure: each attention silo's latent cache holds 64 blocks (the smallest budget
/// a silo accepts, 1 MiB), and 20 streams of 100 tokens need about 160. The planner preempts and re-admits sequences on
/// both shards, steps span both, and every stream ends with exactly the tokens of its solo run, greedy and seeded.
/// </summary>
public sealed class MultiShardPressureTests : IAsyncLifetime
{
    TestCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await TestSilo.StartClusterAsync<Configurator>("grid-multishard-pressure");

    public Task DisposeAsync() => TestSilo.StopClusterAsync(_cluster);

    sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder silo) => TestSilo.AddGridSilo(silo, 4, index => new SiloOptions
        {
            Attention = index < 2,
            ExpertGroups = index == 2 ? new[] { 0, 1, 2, 3 } : Array.Empty<int>(),
            CacheMaxBytes = 1 << 20,
        });
    }

    static GenerationRequest Request(int[] prompt, int n, double temperature, long seed) => new()
    {
        PromptIds = prompt,
        MaxTokens = n,
        Sampling = new SamplingParams { Temperature = temperature, Seed = seed },
    };

    [Fact]
    public async Task PreemptedSequencesOnBothShardsFinishWithTheirSoloTokens()
    {
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        var grid = new GridStepExecutor(_cluster.Client, config, new GridTopology { AttentionShards = 2, ExpertGroups = 4 }, NullLogger<GridStepExecutor>.Instance);
        await Poll.UntilAsync(async () => (await grid.GetReadinessAsync(CancellationToken.None)).Ready, "the cluster did not load its weights");
        var budgets = await grid.GetBudgetsAsync(CancellationToken.None);
        Assert.All(budgets, b => Assert.Equal(64, b.TotalBlocks));
        await using var loop = new EngineLoop(grid, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, config.MaxPositionEmbeddings);

        // Prompts that differ from their first token: no two share a cached block, so the demand is real.
        var golden = Golden.Load("full_f32", "text").PromptIds;
        var requests = Enumerable.Range(0, 20).Select(i => Request([(i * 37 + 5) % config.VocabSize, .. golden], 100,
            temperature: i % 2 == 0 ? 0 : 1, seed: 300 + i)).ToArray();
        var solo = new List<List<int>>();
        foreach (var r in requests) solo.Add((await AttentionFailoverTests.RunAsync(loop, r)).Tokens);
        Assert.Equal(0, loop.Preemptions);

        var done = await Task.WhenAll(requests.Select(r => AttentionFailoverTests.RunAsync(loop, r))).WaitAsync(Poll.Deadline);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal("length", done[i].Finish);
            Assert.Equal(solo[i], done[i].Tokens);
        }
        Assert.True(loop.Preemptions > 0, "the streams fit without preemption: the test no longer puts the caches under pressure");
        Assert.Equal(0, loop.LoopRestarts);
    }
}
