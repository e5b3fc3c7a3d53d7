using Grid.Grains.Hosting;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace Grid.Grains.Placement;

/// <summary>Places an expert-group grain on a silo whose metadata declares its group.</summary>
[Serializable, GenerateSerializer, Immutable]
public sealed class ExpertGroupPlacement : PlacementStrategy;

/// <summary>Places an attention grain on a silo whose metadata declares attention work.</summary>
[Serializable, GenerateSerializer, Immutable]
public sealed class AttentionPlacement : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class ExpertGroupPlacementAttribute() : PlacementAttribute(new ExpertGroupPlacement());

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class AttentionPlacementAttribute() : PlacementAttribute(new AttentionPlacement());

/// <summary>
/// Reads the silo metadata every silo publishes (<see cref="SiloMetadataKeys"/>) and places a grain on a silo
/// that serves it: expert group g on a silo listing g (replicas: chosen by the grain key, so spread and stable),
/// attention shard i on the i-th attention silo (modulo their number). A silo's metadata reaches the others
/// shortly after it joins, so placement waits for a matching silo for a while before failing.
/// </summary>
public sealed class GridPlacementDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    public async Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        long key = target.GrainIdentity.GetIntegerKey();
        var deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
            var candidates = strategy is ExpertGroupPlacement
                ? silos.Where(s => ServesGroup(s, key)).ToArray()
                : silos.Where(ServesAttention).ToArray();
            if (candidates.Length > 0) return candidates[(int)(key % candidates.Length)];
            if (DateTime.UtcNow > deadline)
                throw new OrleansException(strategy is ExpertGroupPlacement
                    ? $"no silo in the cluster declares expert group {key} (silo metadata {SiloMetadataKeys.ExpertGroups})"
                    : $"no silo in the cluster declares attention work (silo metadata {SiloMetadataKeys.Attention})");
            await Task.Delay(200);
        }
    }

    bool ServesGroup(SiloAddress silo, long group) =>
        metadata.GetSiloMetadata(silo).Metadata.TryGetValue(SiloMetadataKeys.ExpertGroups, out var groups)
        && groups.Split(',', StringSplitOptions.RemoveEmptyEntries).Any(g => long.TryParse(g, out var v) && v == group);

    bool ServesAttention(SiloAddress silo) =>
        metadata.GetSiloMetadata(silo).Metadata.TryGetValue(SiloMetadataKeys.Attention, out var a) && a == "true";
}
