using Grid.Grains.Contracts;
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
            var (silo, error) = Choose(strategy is ExpertGroupPlacement, key, context.GetCompatibleSilos(target),
                s => metadata.GetSiloMetadata(s).Metadata, mayWait: DateTime.UtcNow < deadline);
            if (silo is not null) return silo;
            if (error is not null) throw new NoServingSiloException(strategy is ExpertGroupPlacement ? (int)key : null, error);
            await Task.Delay(100);
        }
    }

    /// <summary>
    /// The placement decision over the live <paramref name="silos"/> and their metadata (an empty dictionary: not known
    /// here yet): a silo, or a failure message, or neither (wait and ask again; only while <paramref name="mayWait"/>
    /// and some silo's metadata is unknown). Expert group <paramref name="key"/>: declaring silos first, then elastic
    /// ones (but not while a silo that may declare it is unknown), each chosen by key modulo their number in address
    /// order; attention shard <paramref name="key"/>: attention silos, the same way.
    /// </summary>
    public static (SiloAddress? Silo, string? Error) Choose(bool expertGroup, long key, IEnumerable<SiloAddress> silos,
        Func<SiloAddress, IReadOnlyDictionary<string, string>> metadataOf, bool mayWait)
    {
        var known = silos.OrderBy(s => s.ToString(), StringComparer.Ordinal).Select(s => (Silo: s, Metadata: metadataOf(s))).ToArray();
        // Every Grid silo publishes SiloMetadataKeys.Attention: without it, this silo has not received that silo's metadata yet.
        bool waiting = mayWait && known.Any(k => !k.Metadata.ContainsKey(SiloMetadataKeys.Attention));
        if (expertGroup)
        {
            if (Pick(known.Where(k => ServesGroup(k.Metadata, key)), key) is { } declared) return (declared, null);
            if (waiting) return (null, null);
            if (Pick(known.Where(k => IsTrue(k.Metadata, SiloMetadataKeys.Elastic)), key) is { } elastic) return (elastic, null);
            return (null, NoGroupSilo(key));
        }
        if (Pick(known.Where(k => IsTrue(k.Metadata, SiloMetadataKeys.Attention)), key) is { } attention) return (attention, null);
        return waiting ? (null, null) : (null, $"no silo in the cluster serves attention (none declares {SiloMetadataKeys.Attention}=true)");
    }

    /// <summary>The message of a failed expert-group placement.</summary>
    public static string NoGroupSilo(long group) =>
        $"no silo in the cluster can serve expert group {group} (none declares it in {SiloMetadataKeys.ExpertGroups} and no elastic silo is running)";

    static SiloAddress? Pick(IEnumerable<(SiloAddress Silo, IReadOnlyDictionary<string, string> Metadata)> candidates, long key)
    {
        var list = candidates.Select(c => c.Silo).ToArray();
        return list.Length > 0 ? list[(int)(key % list.Length)] : null;
    }

    static bool ServesGroup(IReadOnlyDictionary<string, string> metadata, long group) =>
        metadata.TryGetValue(SiloMetadataKeys.ExpertGroups, out var groups)
        && groups.Split(',', StringSplitOptions.RemoveEmptyEntries).Any(g => long.TryParse(g, out var v) && v == group);

    static bool IsTrue(IReadOnlyDictionary<string, string> metadata, string key) => metadata.TryGetValue(key, out var v) && v == "true";
}
