using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Orleans.Concurrency;
using Orleans.Runtime;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace Grid.Grains;

/// <summary>Reads this silo's membership snapshot and the silo metadata every silo publishes.</summary>
[StatelessWorker]
public sealed class ClusterViewGrain(IClusterMembershipService membership, ISiloMetadataCache metadata) : Grain, IClusterViewGrain
{
    public Task<SiloView[]> GetSilosAsync(CancellationToken cancellationToken = default)
    {
        var silos = membership.CurrentSnapshot.Members.Values
            .Where(m => m.Status is SiloStatus.Active or SiloStatus.Joining or SiloStatus.ShuttingDown or SiloStatus.Stopping or SiloStatus.Dead)
            .Select(m =>
            {
                var meta = metadata.GetSiloMetadata(m.SiloAddress).Metadata;
                var groups = meta.TryGetValue(SiloMetadataKeys.ExpertGroups, out var g)
                    ? g.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.TryParse(x, out var v) ? v : -1).Where(v => v >= 0).ToArray()
                    : [];
                return new SiloView(m.SiloAddress.ToString(), m.Status.ToString(),
                    meta.TryGetValue(SiloMetadataKeys.Attention, out var a) && a == "true", groups,
                    meta.TryGetValue(SiloMetadataKeys.Elastic, out var e) && e == "true");
            })
            .OrderBy(s => s.Address, StringComparer.Ordinal)
            .ToArray();
        return Task.FromResult(silos);
    }
}
