namespace Grid.Configuration;

/// <summary>
/// The expert-group layout of a StatefulSet of expert silos: which groups silo <c>ordinal</c> declares, from its ordinal,
/// the number of expert silos the layout is planned for and <c>Grid:Cluster:ExpertGroups</c>. It is a rule, not a table,
/// so it holds whatever the StatefulSet is scaled to:
/// <list type="bullet">
/// <item>n silos, G groups, n &lt;= G: silo i declares every group g with g mod n = i (round-robin, as
/// deploy/local/cluster.sh deals them); every group has exactly one declaring silo, each silo G/n of them (rounded up or down).</item>
/// <item>n &gt; G: silo i declares group i mod G; every group has n/G replicas (rounded up or down).</item>
/// <item>an ordinal at or beyond n (the StatefulSet scaled up without changing n) declares what silo (ordinal mod n)
/// declares: a replica of it.</item>
/// <item>scaled down below n: the groups of the missing ordinals have no declaring silo; expert silos run elastic
/// (<c>Grid:Silo:Elastic</c>), so placement puts those groups on them and they load the tensors on demand.</item>
/// </list>
/// </summary>
public static class ExpertLayout
{
    /// <param name="ordinal">The silo's ordinal, &gt;= 0.</param>
    /// <param name="expertSilos">The planned number of expert silos, &gt;= 1.</param>
    /// <param name="expertGroups">Grid:Cluster:ExpertGroups, &gt;= 1.</param>
    /// <returns>The groups this silo declares, ascending; never empty.</returns>
    public static int[] GroupsFor(int ordinal, int expertSilos, int expertGroups)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(ordinal);
        ArgumentOutOfRangeException.ThrowIfLessThan(expertSilos, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(expertGroups, 1);
        int slot = ordinal % expertSilos;
        if (expertSilos > expertGroups) return [slot % expertGroups];
        return Enumerable.Range(0, expertGroups).Where(g => g % expertSilos == slot).ToArray();
    }
}
