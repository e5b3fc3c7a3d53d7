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
/// that serves it. Expert group g: a silo listing g (replicas: chosen by the grain key, so spread and stable); when
/// no live silo lists g, an elastic silo (again by key), which loads the group on activation. Attention shard i: the
/// i-th attention silo (modulo their number). When nothing can serve the grain, placement fails at once with a clear
/// <see cref="OrleansException"/>; it only waits, briefly, while some live silo's metadata has not reached this silo
/// yet (a silo that joined moments ago).
/// </summary>
public sealed class GridPlacementDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    /// <summary>Longest wait for the metadata of silos that just joined.</summary>
    static readonly TimeSpan MetadataWait = TimeSpan.FromSeconds(3);

    public async Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        long key = target.GrainIdentity.GetIntegerKey();
        var deadline = DateTime.UtcNow + MetadataWait;
        while (true)
        {
            var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
            bool waiting = silos.Any(s => !Known(s)) && DateTime.UtcNow < deadline;
            if (strategy is ExpertGroupPlacement)
            {
                if (Pick(silos.Where(s => ServesGroup(s, key)).ToArray(), key) is { } declared) return declared;
                // A silo declaring g may be one whose metadata is not here yet: wait for it before falling back.
                if (!waiting && Pick(silos.Where(IsElastic).ToArray(), key) is { } elastic) return elastic;
                if (!waiting) throw new OrleansException(NoGroupSilo(key));
            }
            else
            {
                if (Pick(silos.Where(ServesAttention).ToArray(), key) is { } attention) return attention;
                if (!waiting) throw new OrleansException($"no silo in the cluster serves attention (none declares {SiloMetadataKeys.Attention}=true)");
            }
            await Task.Delay(100);
        }
    }

    /// <summary>The message of a failed expert-group placement.</summary>
    public static string NoGroupSilo(long group) =>
        $"no silo in the cluster can serve expert group {group} (none declares it in {SiloMetadataKeys.ExpertGroups} and no elastic silo is running)";

    static SiloAddress? Pick(SiloAddress[] candidates, long key) => candidates.Length > 0 ? candidates[(int)(key % candidates.Length)] : null;

    IReadOnlyDictionary<string, string> Metadata(SiloAddress silo) => metadata.GetSiloMetadata(silo).Metadata;

    /// <summary>Whether this silo has the silo's metadata (every Grid silo publishes <see cref="SiloMetadataKeys.Attention"/>).</summary>
    bool Known(SiloAddress silo) => Metadata(silo).ContainsKey(SiloMetadataKeys.Attention);

    bool ServesGroup(SiloAddress silo, long group) =>
        Metadata(silo).TryGetValue(SiloMetadataKeys.ExpertGroups, out var groups)
        && groups.Split(',', StringSplitOptions.RemoveEmptyEntries).Any(g => long.TryParse(g, out var v) && v == group);

    bool IsElastic(SiloAddress silo) => Metadata(silo).TryGetValue(SiloMetadataKeys.Elastic, out var e) && e == "true";

    bool ServesAttention(SiloAddress silo) => Metadata(silo).TryGetValue(SiloMetadataKeys.Attention, out var a) && a == "true";
}
