using Orleans;
using Orleans.Runtime;

namespace Grid.Grains.Contracts;

/// <summary>
/// Placement found no silo in the cluster for a part of the model: an expert group no silo declares (and no elastic silo
/// is running), or attention when no silo hosts it. Typed so that callers (the gateway, the shard exchange) tell "nothing
/// can serve this" from a transient failure without reading the message.
/// </summary>
[GenerateSerializer]
public sealed class NoServingSiloException : OrleansException
{
    public NoServingSiloException(int? expertGroup, string message) : base(message) => ExpertGroup = expertGroup;

    /// <summary>The expert group nothing serves; null when attention is what is missing.</summary>
    [Id(0)]
    public int? ExpertGroup { get; private set; }

    /// <summary>The exception, or the first one in its inner chain, that says a part of the model cannot be served.</summary>
    public static NoServingSiloException? Find(Exception? e)
    {
        for (var x = e; x is not null; x = x.InnerException)
            if (x is NoServingSiloException found) return found;
        return null;
    }
}
