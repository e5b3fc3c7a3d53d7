using System.Collections.Concurrent;
using Grid.Configuration;
using Grid.Gateway.Orchestration;
using Grid.Grains;
using Grid.Grains.Hosting;
using Grid.ModelCore.Config;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Orleans.TestingHost;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// An in-process Orleans TestingHost cluster of 3 silos serving a golden checkpoint with its routed experts
/// in 4 groups spread over them: silo 0 attention + group 0, silo 1 groups 1 and 2, silo 2 group 3.
/// Every grain call into a Grid grain is counted by an incoming call filter.
/// </summary>
public abstract class GridTestCluster : IAsyncLifetime
{
    public const int Groups = 4;
    public static readonly int[][] GroupsOfSilo = [[0], [1, 2], [3]];
    public static readonly ConcurrentDictionary<string, long> Calls = new();

    protected abstract string Checkpoint { get; }
    /// <summary>Names the cluster (its service id and its grain-call counts) when several fixtures serve one checkpoint.</summary>
    protected virtual string Name => Checkpoint;
    public TestCluster Cluster { get; private set; } = null!;
    public ModelConfig Config { get; private set; } = null!;
    public GridStepExecutor Executor { get; private set; } = null!;
    public string ModelPath => Golden.Dir(Checkpoint);

    /// <summary>
    /// Step calls (start, exchange, continue, expert forward) this cluster's attention and expert-group grains have received
    /// so far; the background lease renewals and cache reads are not step calls.
    /// </summary>
    public long CallsSoFar => CallsOf("StartStepAsync", "ExchangeStepAsync", "ContinueStepAsync", "ForwardAsync");

    /// <summary>Calls of the given grain methods received so far.</summary>
    public long CallsOf(params string[] methods) => Calls.Where(kv => kv.Key.StartsWith(Name + "|", StringComparison.Ordinal)
        && methods.Any(m => kv.Key.EndsWith("." + m, StringComparison.Ordinal))).Sum(kv => kv.Value);

    public async Task InitializeAsync()
    {
        Config = ModelConfig.Load(Path.Combine(ModelPath, "config.json"));
        var builder = new TestClusterBuilder(3);
        builder.Options.ServiceId = "grid-test-" + Name;
        builder.ConfigureHostConfiguration(c => c.AddInMemoryCollection(new Dictionary<string, string?> { ["GridModelPath"] = ModelPath, ["GridClusterName"] = Name }));
        builder.AddSiloBuilderConfigurator<SiloConfigurator>();
        builder.AddClientBuilderConfigurator<ClientConfigurator>();
        Cluster = builder.Build();
        await Cluster.DeployAsync();
        Executor = new GridStepExecutor(Cluster.Client, Config, new GridTopology { AttentionShards = 1, ExpertGroups = Groups }, NullLogger<GridStepExecutor>.Instance);
        await Poll.UntilAsync(async () => (await Executor.GetReadinessAsync(CancellationToken.None)).Ready, "the test cluster did not load its weights");
    }

    /// <summary>The model part a silo loaded, by silo index.</summary>
    public ModelHost HostOf(int silo) =>
        ((InProcessSiloHandle)Cluster.Silos[silo]).SiloHost.Services.GetRequiredService<ModelHost>();

    public async Task DisposeAsync()
    {
        await Cluster.StopAllSilosAsync();
        await Cluster.DisposeAsync();
    }

    sealed class SiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder silo)
        {
            TestSilo.AddGridSilo(silo, Groups, index => new SiloOptions { Attention = index == 0, ExpertGroups = GroupsOfSilo[index] });
            var model = silo.Configuration["GridClusterName"]!;
            silo.AddIncomingGrainCallFilter(async ctx =>
            {
                // Keyed by the cluster's name: the lite and full clusters run their test classes in parallel.
                if (ctx.Grain is AttentionGrain or ExpertGroupGrain)
                    Calls.AddOrUpdate(model + "|" + ctx.Grain.GetType().Name + "." + ctx.InterfaceMethod.Name, 1, (_, v) => v + 1);
                await ctx.Invoke();
            });
        }
    }

    /// <summary>The test's client (the gateway's role) carries trace context into its grain calls, as the gateway's does.</summary>
    sealed class ClientConfigurator : IClientBuilderConfigurator
    {
        public void Configure(IConfiguration configuration, IClientBuilder client) => client.AddActivityPropagation();
    }
}

/// <summary>What every TestingHost silo configurator shares: the silo's index from its name, and the Grid silo over the cluster's checkpoint.</summary>
public static class TestSilo
{
    /// <summary>0 for the primary silo, n for "Secondary_n".</summary>
    public static int Index(ISiloBuilder silo)
    {
        var name = silo.Configuration["Orleans:Name"] ?? throw new InvalidOperationException("the test cluster gave the silo no name");
        return name == "Primary" ? 0 : int.Parse(name.Split('_')[1]);
    }

    /// <summary>
    /// Deploys a 3-silo TestingHost cluster over the <c>full_f32</c> golden checkpoint whose silos <typeparamref name="TConfigurator"/>
    /// lays out; <paramref name="settings"/> adds host configuration the configurator reads.
    /// </summary>
    public static async Task<TestCluster> StartClusterAsync<TConfigurator>(string serviceId, IReadOnlyDictionary<string, string?>? settings = null)
        where TConfigurator : ISiloConfigurator, new()
    {
        var builder = new TestClusterBuilder(3);
        builder.Options.ServiceId = serviceId;
        var configuration = new Dictionary<string, string?> { ["GridModelPath"] = Golden.Dir("full_f32") };
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>()) configuration[key] = value;
        builder.ConfigureHostConfiguration(c => c.AddInMemoryCollection(configuration));
        builder.AddSiloBuilderConfigurator<TConfigurator>();
        var cluster = builder.Build();
        await cluster.DeployAsync();
        return cluster;
    }

    /// <summary>Stops every silo of a cluster from <see cref="StartClusterAsync"/> and disposes it.</summary>
    public static async Task StopClusterAsync(TestCluster cluster)
    {
        await cluster.StopAllSilosAsync();
        await cluster.DisposeAsync();
    }

    /// <summary>Adds the Grid silo for the checkpoint in the cluster's <c>GridModelPath</c>, with the roles <paramref name="layout"/> gives the silo's index.</summary>
    public static void AddGridSilo(ISiloBuilder silo, int expertGroups, Func<int, SiloOptions> layout) =>
        silo.AddGridSilo(new GridOptions
        {
            Model = new ModelOptions { Path = silo.Configuration["GridModelPath"]! },
            Cluster = new GridClusterOptions { ExpertGroups = expertGroups },
            Silo = layout(Index(silo)),
        });
}

public sealed class LiteCluster : GridTestCluster { protected override string Checkpoint => "lite_f32"; }
public sealed class FullCluster : GridTestCluster { protected override string Checkpoint => "full_f32"; }
