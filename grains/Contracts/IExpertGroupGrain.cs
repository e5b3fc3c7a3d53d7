namespace Grid.Grains.Contracts;

/// <summary>
/// The tokens of one MoE layer that routed into an expert group, bundled: hidden rows [n, d] and, per row,
/// the top-K expert ids and weights (all K, including experts of other groups, which the group skips).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record ExpertRequest(
    [property: Id(0)] int Layer,
    [property: Id(1)] TensorPayload Input,
    [property: Id(2)] int TopK,
    [property: Id(3)] int[] ExpertIds,
    [property: Id(4)] float[] Weights);

/// <summary>
/// One group of routed experts (a contiguous range) for every MoE layer, pinned to a silo that declares the
/// group; the weights stay loaded on that silo for its lifetime. Key: the group index.
/// </summary>
public interface IExpertGroupGrain : IGrainWithIntegerKey
{
    /// <summary>Weighted sum of the group's experts over the bundled tokens: [n, d].</summary>
    Task<TensorPayload> ForwardAsync(ExpertRequest request, CancellationToken cancellationToken = default);

    /// <summary>True once the silo has loaded the group's weights; names the silo.</summary>
    Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default);
}

[GenerateSerializer, Immutable]
public sealed record HostStatus(
    [property: Id(0)] bool Ready,
    [property: Id(1)] string Silo,
    [property: Id(2)] string Detail);
