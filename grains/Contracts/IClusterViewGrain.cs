namespace Grid.Grains.Contracts;

/// <summary>A silo as the cluster's membership and its metadata describe it: what it serves.</summary>
[GenerateSerializer, Immutable]
public sealed record SiloView(
    [property: Id(0)] string Address,
    [property: Id(1)] string Status,
    [property: Id(2)] bool Attention,
    [property: Id(3)] int[] ExpertGroups,
    [property: Id(4)] bool Elastic)
{
    public bool Active => Status == "Active";
}

/// <summary>
/// The cluster's membership as the silo that answers sees it (a stateless worker: it runs on the silo the caller
/// reaches, so it answers while any silo does). The gateway polls it to learn within a membership round that a silo
/// died, instead of waiting for calls to time out.
/// </summary>
public interface IClusterViewGrain : IGrainWithIntegerKey
{
    Task<SiloView[]> GetSilosAsync(CancellationToken cancellationToken = default);
}
