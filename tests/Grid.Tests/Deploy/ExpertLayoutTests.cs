using Grid.Configuration;
using Microsoft.Extensions.Configuration;
using Xunit;

namespace Grid.Tests.Deploy;

/// <summary>
/// The expert-group layout of an expert StatefulSet (<see cref="ExpertLayout"/>) over many replica and group counts:
/// planned pods cover every group, evenly; pods beyond the plan replicate planned ones; a scaled-down set leaves groups
/// only the elastic fallback serves. And a silo's options take their groups from <c>Grid:Silo:Ordinal</c>.
/// </summary>
public sealed class ExpertLayoutTests
{
    public static TheoryData<int, int> Shapes()
    {
        var data = new TheoryData<int, int>();
        foreach (int groups in new[] { 1, 2, 3, 4, 6, 8, 16, 64 })
            foreach (int silos in new[] { 1, 2, 3, 4, 5, 7, 8, 12, 16, 100 })
                data.Add(silos, groups);
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void PlannedPodsCoverEveryGroupEvenly(int silos, int groups)
    {
        var layout = Enumerable.Range(0, silos).Select(i => ExpertLayout.GroupsFor(i, silos, groups)).ToArray();
        Assert.All(layout, g => Assert.NotEmpty(g));
        Assert.All(layout.SelectMany(g => g), g => Assert.InRange(g, 0, groups - 1));
        // Every group is declared; declarers per group and groups per pod differ by at most one.
        var declarers = Enumerable.Range(0, groups).Select(g => layout.Count(p => p.Contains(g))).ToArray();
        Assert.All(declarers, d => Assert.True(d >= 1));
        Assert.True(declarers.Max() - declarers.Min() <= 1, $"declarers per group: {string.Join(",", declarers)}");
        var perPod = layout.Select(p => p.Length).ToArray();
        Assert.True(perPod.Max() - perPod.Min() <= 1, $"groups per pod: {string.Join(",", perPod)}");
        // Each group has exactly max(1, silos / groups rounded) declarers: with no more pods than groups, exactly one.
        if (silos <= groups) Assert.All(declarers, d => Assert.Equal(1, d));
        else Assert.Equal(silos, declarers.Sum());
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void PodsBeyondThePlanReplicateAPlannedPod(int silos, int groups)
    {
        for (int extra = silos; extra < silos * 3; extra++)
            Assert.Equal(ExpertLayout.GroupsFor(extra % silos, silos, groups), ExpertLayout.GroupsFor(extra, silos, groups));
    }

    [Fact]
    public void ScaledDownTheMissingOrdinalsGroupsAreLeftToElasticPods()
    {
        // Planned for 4 pods over 8 groups, running 3: ordinal 3's groups (3, 7) have no declarer; every pod is
        // elastic in deploy/k8s/grid.yaml, so placement puts them on the 3 running pods.
        var declared = Enumerable.Range(0, 3).SelectMany(i => ExpertLayout.GroupsFor(i, 4, 8)).ToHashSet();
        Assert.Equal([3, 7], Enumerable.Range(0, 8).Where(g => !declared.Contains(g)));
        Assert.Equal([0, 4], ExpertLayout.GroupsFor(0, 4, 8));
        Assert.Equal([1], ExpertLayout.GroupsFor(5, 8, 4));   // 8 pods over 4 groups: two replicas each
    }

    [Fact]
    public void BadArgumentsThrow()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ExpertLayout.GroupsFor(-1, 2, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => ExpertLayout.GroupsFor(0, 0, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => ExpertLayout.GroupsFor(0, 2, 0));
    }

    static GridOptions LoadSilo(params (string Key, string Value)[] settings) =>
        GridOptionsSetup.Load(new ConfigurationBuilder().AddInMemoryCollection(
            settings.Append(("Grid:Model:Path", Golden.Dir("full_f32"))).ToDictionary(s => s.Item1, s => (string?)s.Item2)).Build(), GridExecutable.Silo);

    [Fact]
    public void ASilosGroupsFollowFromItsOrdinal()
    {
        var o = LoadSilo(("Grid:Cluster:ExpertGroups", "4"), ("Grid:Silo:ExpertSilos", "3"), ("Grid:Silo:Ordinal", "0"), ("Grid:Silo:ExpertGroups", "1"));
        Assert.Equal([0, 3], o.Silo.ExpertGroups);   // the ordinal's layout replaces the listed groups
        o = LoadSilo(("Grid:Cluster:ExpertGroups", "4"), ("Grid:Silo:ExpertSilos", "3"), ("Grid:Silo:Ordinal", "4"));
        Assert.Equal([1], o.Silo.ExpertGroups);
        // Without an ordinal the listed groups stay.
        o = LoadSilo(("Grid:Cluster:ExpertGroups", "4"), ("Grid:Silo:ExpertGroups", "2,3"));
        Assert.Equal([2, 3], o.Silo.ExpertGroups);
    }

    [Fact]
    public void AnOrdinalWithoutTheSiloCountIsRejected()
    {
        var e = Assert.Throws<GridConfigurationException>(() => LoadSilo(("Grid:Cluster:ExpertGroups", "4"), ("Grid:Silo:Ordinal", "1")));
        Assert.Contains("Grid:Silo:ExpertSilos must be set (>= 1) when Grid:Silo:Ordinal is (1)", e.Message);
        e = Assert.Throws<GridConfigurationException>(() => LoadSilo(("Grid:Silo:Ordinal", "-2"), ("Grid:Silo:ExpertSilos", "2")));
        Assert.Contains("Grid:Silo:Ordinal must be at least -1", e.Message);
    }
}
