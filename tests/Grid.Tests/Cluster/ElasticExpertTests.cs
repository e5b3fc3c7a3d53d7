using Grid.Configuration;
using Grid.Gateway.Orchestration;
using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Microsoft.Extensions.Logging.Abstractions;
using Orleans.TestingHost;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests.Cluster;

/// <summary>
/// A 3-silo TestingHost cluster over full_f32 (4 expert groups), each silo configured from <paramref name="silos"/>
/// by its index; silos started later (index 3 on) get <see cref="Late"/>.
/// </summary>
public abstract class ElasticClusterBase(string serviceId) : IAsyncLifetime
{
    protected TestCluster Cluster = null!;
    protected GridStepExecutor Executor = null!;
    protected readonly Expected Expected = Golden.Load("full_f32", "text");

    public async Task InitializeAsync()
    {
        Cluster = await TestSilo.StartClusterAsync<Configurator>(serviceId, new Dictionary<string, string?> { ["GridLayout"] = serviceId });
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("full_f32"), "config.json"));
        Executor = new GridStepExecutor(Cluster.Client, config, new GridTopology { ExpertGroups = 4, CallTimeout = TimeSpan.FromSeconds(10) },
            NullLogger<GridStepExecutor>.Instance);
        await Poll.UntilAsync(async () => (await Executor.GetReadinessAsync(CancellationToken.None)).Ready, "the cluster did not load its weights");
    }

    public Task DisposeAsync() => TestSilo.StopClusterAsync(Cluster);

    /// <summary>
    /// What silo i serves, by layout (the service id), no group replicated. Elastic layout: silo 0 attention + group 0,
    /// silo 1 groups 1-3, silo 2 elastic. Otherwise: silo 0 attention + group 0, silo 1 group 1, silo 2 groups 2 and 3.
    /// </summary>
    internal static SiloOptions Layout(string layout, int index) => (index, layout == ElasticExpertTests.ServiceId) switch
    {
        (0, _) => new SiloOptions { Attention = true, ExpertGroups = new[] { 0 } },
        (1, true) => new SiloOptions { ExpertGroups = new[] { 1, 2, 3 } },
        (2, true) => new SiloOptions { Elastic = true },
        (1, false) => new SiloOptions { ExpertGroups = new[] { 1 } },
        (2, false) => new SiloOptions { ExpertGroups = new[] { 2, 3 } },
        _ => Late,
    };

    /// <summary>A silo started during a test: declares group 1 only.</summary>
    internal static readonly SiloOptions Late = new() { ExpertGroups = new[] { 1 } };

    sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder silo) => TestSilo.AddGridSilo(silo, 4, index => Layout(silo.Configuration["GridLayout"]!, index));
    }

    protected Task<HostStatus> StatusOfGroupAsync(int group) => Cluster.Client.GetGrain<IExpertGroupGrain>(group).GetStatusAsync();

    /// <summary>
    /// Asks group <paramref name="group"/>'s status until <paramref name="done"/> holds for the answer (a status, or
    /// the failure's message): right after a silo stops, the other silos may still route a call to it for a moment
    /// (membership and the grain directory catch up), and such a call only ends with its timeout.
    /// </summary>
    protected Task<(HostStatus? Status, string? Error)> AskGroupUntilAsync(int group, Func<(HostStatus? Status, string? Error), bool> done) =>
        Poll.UntilAsync<(HostStatus?, string?)>(async () =>
        {
            try { return (await StatusOfGroupAsync(group).WaitAsync(TimeSpan.FromSeconds(15)), null); }
            catch (Exception e) { return (null, Flatten(e)); }
        }, done);

    /// <summary>The exception's message and its inner exceptions' (the placement failure may arrive wrapped).</summary>
    protected static string Flatten(Exception e) => e is AggregateException a
        ? string.Join(" | ", a.Flatten().InnerExceptions.Select(Flatten))
        : e.Message + (e.InnerException is { } inner ? " | " + Flatten(inner) : "");

    protected SiloHandle SiloOf(string address) => Cluster.Silos.Single(s => s.SiloAddress.ToString() == address);
}

/// <summary>
/// Elastic silos: silo 2 declares no group but is elastic. When silo 1 (the only one declaring groups 1-3) leaves, its
/// groups are placed on silo 2, which loads them from the checkpoint, and generation goes on with identical output.
/// </summary>
public sealed class ElasticExpertTests() : ElasticClusterBase(ServiceId)
{
    public const string ServiceId = "grid-elastic";

    [Fact]
    public async Task GroupMovesToTheElasticSiloWhenItsOnlySiloLeaves()
    {
        var before = await GridClusterTestsBase<FullCluster>.GreedyAsync(Executor, 1, Expected.PromptIds, 16);
        Assert.Equal(Expected.GeneratedIds, before.Tokens);

        // Group 1 runs on silo 1, the one silo declaring it: the elastic silo is only a fallback.
        var host = (await StatusOfGroupAsync(1)).Silo;
        Assert.Equal(Cluster.Silos[1].SiloAddress.ToString(), host);
        var elastic = Cluster.Silos[2];
        Assert.DoesNotContain("groups=[1", (await Cluster.Client.GetGrain<IExpertGroupGrain>(0).GetStatusAsync()).Detail);

        await Cluster.StopSiloAsync(Cluster.Silos[1]);
        // Wait until group 1 answers again (placed on the elastic silo, perhaps still loading), then generate.
        var (answer, error) = await AskGroupUntilAsync(1, r => r.Status is not null);
        Assert.True(answer is not null, error);
        var after = await GridClusterTestsBase<FullCluster>.GreedyAsync(Executor, 2, Expected.PromptIds, 16);
        Assert.Equal(Expected.GeneratedIds, after.Tokens);

        var moved = await StatusOfGroupAsync(1);
        Assert.Equal(elastic.SiloAddress.ToString(), moved.Silo);
        Assert.True(moved.Ready, moved.Detail);
        Assert.Contains("elastic", moved.Detail);
        Assert.Matches(@"groups=\[[0-9,]*1[0-9,]*\]", moved.Detail);
        // Group 0 keeps running on silo 0 (declared there): only the orphaned groups moved.
        Assert.Equal(Cluster.Primary!.SiloAddress.ToString(), (await StatusOfGroupAsync(0)).Silo);
        Assert.True((await Executor.GetReadinessAsync(CancellationToken.None)).Ready);
    }
}

/// <summary>
/// No elastic silo: when the only silo declaring group 1 leaves, a step that needs group 1 fails fast with a clear
/// message naming the group; once a silo declaring group 1 joins, generation matches the golden output again.
/// </summary>
public sealed class NoElasticSiloTests() : ElasticClusterBase("grid-no-elastic")
{
    [Fact]
    public async Task PlacementFailsClearlyThenRecoversWhenADeclaringSiloJoins()
    {
        var before = await GridClusterTestsBase<FullCluster>.GreedyAsync(Executor, 1, Expected.PromptIds, 16);
        Assert.Equal(Expected.GeneratedIds, before.Tokens);

        await Cluster.StopSiloAsync(Cluster.Silos[1]);
        const string Message = "no silo in the cluster can serve expert group 1 (none declares it in grid.expert-groups and no elastic silo is running)";
        var (status, error) = await AskGroupUntilAsync(1, r => r.Error?.Contains(Message) == true);
        Assert.Null(status);
        Assert.Contains(Message, error);

        var failed = await Assert.ThrowsAnyAsync<Exception>(() => GridClusterTestsBase<FullCluster>.GreedyAsync(Executor, 2, Expected.PromptIds, 16));
        Assert.Contains("expert group 1", Flatten(failed));
        // The placement failure crossed the grain boundary typed (its codec), not as text to parse.
        Assert.Equal(1, Grid.Grains.Contracts.NoServingSiloException.Find(failed)?.ExpertGroup);
        await Executor.ReleaseAsync([2], CancellationToken.None);

        // A silo declaring group 1 joins (see Late): group 1 is placed there and generation works again.
        var late = await Cluster.StartAdditionalSiloAsync();
        await Poll.UntilAsync(async () => (await Executor.GetReadinessAsync(CancellationToken.None)).Ready, "the new silo did not take on group 1");
        var again = await GridClusterTestsBase<FullCluster>.GreedyAsync(Executor, 3, Expected.PromptIds, 16);
        Assert.Equal(Expected.GeneratedIds, again.Tokens);
        var status1 = await StatusOfGroupAsync(1);
        Assert.True(status1.Ready, status1.Detail);
        Assert.Equal(late.SiloAddress.ToString(), status1.Silo);
    }

}

/// <summary>model-core: a group loaded into an already-loaded model computes what a model loaded with it from the start does.</summary>
public sealed class ExpertGroupLoadingTests
{
    [Fact]
    public void GroupLoadedLaterMatchesGroupLoadedAtStart()
    {
        using var _ = no_grad();
        var dir = Golden.Dir("full_f32");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var ranges = ExpertRange.Partition(config.NRoutedExperts, 4);
        using var atStart = DeepseekV2Model.Load(dir, new ModelLoadOptions { LoadAttention = false, ExpertRanges = [ranges[0], ranges[2]] });
        using var later = DeepseekV2Model.Load(dir, new ModelLoadOptions { LoadAttention = false, ExpertRanges = [ranges[0]] });
        Assert.Single(later.ExpertGroups);

        var added = later.LoadExpertGroup(dir, ranges[2]);
        Assert.Equal(ranges[2], added.Range);
        Assert.Same(added, later.LoadExpertGroup(dir, ranges[2]));   // idempotent
        Assert.Equal([ranges[0], ranges[2]], later.ExpertGroups.Select(g => g.Range));
        Assert.Equal(atStart.LoadedTensors.Order(), later.LoadedTensors.Order());
        Assert.Throws<ArgumentException>(() => later.LoadExpertGroup(dir, new ExpertRange(ranges[2].First + 1, ranges[2].Count)));

        // Tokens routed into every expert of both groups, with distinct weights.
        int tokens = 6, topK = config.NumExpertsPerTok;
        var rng = new Random(7);
        var ids = new int[tokens * topK];
        var weights = new float[tokens * topK];
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = rng.Next(config.NRoutedExperts);
            weights[i] = (float)rng.NextDouble();
        }
        var routing = new Routing(tokens, topK, ids, weights);
        using var x = randn(tokens, config.HiddenSize, generator: new TorchSharp.torch.Generator(11));
        foreach (var layer in config.MoeLayers)
        {
            using var scope = NewDisposeScope();
            var want = atStart.ExpertGroups[1].Forward(layer, x, routing);
            var got = added.Forward(layer, x, routing);
            Assert.True(want.abs().sum().item<float>() > 0, "group 2 got no tokens");
            Assert.True(allclose(want, got, rtol: 0, atol: 0), $"layer {layer}: group loaded later differs");
            Assert.True(allclose(atStart.Experts(layer, x, routing), later.Experts(layer, x, routing), rtol: 0, atol: 0), $"layer {layer}: sum differs");
        }
    }
}

/// <summary>The silo-side model host of an elastic silo: starts with nothing, loads a group once however many ask.</summary>
public sealed class ElasticModelHostTests
{
    static ModelHost Host(SiloOptions silo) => new(new GridOptions
    {
        Model = new ModelOptions { Path = Golden.Dir("full_f32") },
        Cluster = new GridClusterOptions { ExpertGroups = 4 },
        Silo = silo,
    }, NullLogger<ModelHost>.Instance);

    [Fact]
    public async Task ElasticHostWithNothingDeclaredLoadsEachGroupOnceOnDemand()
    {
        using var host = Host(new SiloOptions { Elastic = true });
        await host.StartAsync(CancellationToken.None);
        var model = await host.ModelAsync();
        Assert.Empty(model.LoadedTensors);
        Assert.Empty(host.HeldGroups());
        Assert.Equal("attention=False groups=[] elastic tensors=0", host.Detail);

        // Racing callers share one load.
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => host.EnsureGroupAsync(i % 2 == 0 ? 1 : 3)));
        Assert.Equal([1, 3], host.HeldGroups());
        Assert.True(host.HoldsGroup(1));
        Assert.False(host.HoldsGroup(2));
        Assert.Equal([host.GroupRanges[1], host.GroupRanges[3]], model.ExpertGroups.Select(g => g.Range));
        int perGroup = host.GroupRanges[1].Count * host.Config.MoeLayers.Count() * 3;
        Assert.Equal(2 * perGroup, model.LoadedTensors.Count);
        Assert.Equal(model.LoadedTensors.Count, model.LoadedTensors.Distinct().Count());
        Assert.Contains("groups=[1,3] elastic", host.Detail);

        await host.EnsureGroupAsync(1);   // already held: nothing more loaded
        Assert.Equal(2 * perGroup, model.LoadedTensors.Count);
    }

    [Fact]
    public async Task NonElasticHostRefusesAGroupItDoesNotDeclare()
    {
        using var host = Host(new SiloOptions { ExpertGroups = new[] { 0 } });
        await host.StartAsync(CancellationToken.None);
        await host.EnsureGroupAsync(0);
        Assert.Equal([0], host.HeldGroups());
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => host.EnsureGroupAsync(2));
        Assert.Contains("expert group 2 is not served by this silo", e.Message);
        Assert.False(host.HoldsGroup(2));
    }
}

/// <summary>The placement decision on its own: declaring silos, then elastic ones, then a clear failure.</summary>
public sealed class GridPlacementDecisionTests
{
    static readonly SiloAddress A = Silo(1), B = Silo(2), C = Silo(3);

    static SiloAddress Silo(int i) => SiloAddress.New(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 11110 + i), 1);

    static IReadOnlyDictionary<string, string> Meta(string groups, bool elastic = false, bool attention = false) => new Dictionary<string, string>
    {
        [SiloMetadataKeys.ExpertGroups] = groups,
        [SiloMetadataKeys.Attention] = attention ? "true" : "false",
        [SiloMetadataKeys.Elastic] = elastic ? "true" : "false",
    };

    static (SiloAddress? Silo, string? Error) Choose(bool group, long key, Dictionary<SiloAddress, IReadOnlyDictionary<string, string>> silos, bool mayWait = true) =>
        Grid.Grains.Placement.GridPlacementDirector.Choose(group, key, silos.Keys, s => silos[s], mayWait);

    [Fact]
    public void DeclaringSilosComeFirstThenElasticOnesThenAFailure()
    {
        var silos = new Dictionary<SiloAddress, IReadOnlyDictionary<string, string>>
        {
            [A] = Meta("0", attention: true), [B] = Meta("1,2"), [C] = Meta("", elastic: true),
        };
        Assert.Equal(B, Choose(true, 1, silos).Silo);
        Assert.Equal(A, Choose(true, 0, silos).Silo);
        Assert.Equal(C, Choose(true, 3, silos).Silo);               // nobody declares 3: the elastic silo
        Assert.Equal(A, Choose(false, 0, silos).Silo);
        silos.Remove(B);
        Assert.Equal(C, Choose(true, 1, silos).Silo);               // 1's silo left: the elastic silo
        silos.Remove(C);
        var (none, error) = Choose(true, 1, silos);
        Assert.Null(none);
        Assert.Equal("no silo in the cluster can serve expert group 1 (none declares it in grid.expert-groups and no elastic silo is running)", error);
        silos.Remove(A);
        silos[B] = Meta("1");
        Assert.StartsWith("no silo in the cluster serves attention", Choose(false, 0, silos).Error);
    }

    [Fact]
    public void ReplicasAndElasticSilosAreChosenByKeyInAddressOrder()
    {
        var silos = new Dictionary<SiloAddress, IReadOnlyDictionary<string, string>> { [C] = Meta("1,2"), [A] = Meta("1,2"), [B] = Meta("0", attention: true) };
        Assert.Equal(A, Choose(true, 2, silos).Silo);   // [A, C][2 % 2]
        Assert.Equal(C, Choose(true, 1, silos).Silo);   // [A, C][1 % 2]
        var elastic = new Dictionary<SiloAddress, IReadOnlyDictionary<string, string>> { [C] = Meta("", elastic: true), [A] = Meta("", elastic: true), [B] = Meta("0", attention: true) };
        Assert.Equal(A, Choose(true, 4, elastic).Silo);
        Assert.Equal(C, Choose(true, 3, elastic).Silo);
    }

    [Fact]
    public void UnknownMetadataIsWaitedForOnlyWhileAllowed()
    {
        var empty = new Dictionary<string, string>();
        var silos = new Dictionary<SiloAddress, IReadOnlyDictionary<string, string>> { [A] = Meta("0", attention: true), [B] = empty, [C] = Meta("", elastic: true) };
        Assert.Equal((null, null), Choose(true, 1, silos));            // B may declare 1: wait rather than go elastic
        Assert.Equal(A, Choose(true, 0, silos).Silo);                  // a declaring silo needs no wait
        Assert.Equal(C, Choose(true, 1, silos, mayWait: false).Silo);  // the wait is over: elastic
        silos.Remove(C);
        Assert.Contains("expert group 1", Choose(true, 1, silos, mayWait: false).Error);
    }
}
