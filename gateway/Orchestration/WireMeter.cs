using Orleans.Serialization;

namespace Grid.Gateway.Orchestration;

/// <summary>Serialized bytes of one step's grain calls, by what they carry.</summary>
public readonly record struct StepWireBytes(long Chunks, long HiddenStates, long Results)
{
    public long Total => Chunks + HiddenStates + Results;
}

/// <summary>
/// Measures what a step puts on the wire by serializing every call's arguments and results with the cluster's own
/// Orleans serializer (the same bytes a remote call sends). Costs a copy per payload: for benchmarks and tests, off
/// in serving.
/// </summary>
public sealed class WireMeter(Serializer serializer)
{
    long _chunks, _hidden, _results;

    /// <summary>The last completed step.</summary>
    public StepWireBytes LastStep { get; private set; }

    public int Size<T>(T value) => serializer.SerializeToArray(value).Length;

    internal void Chunks<T>(T value) => Interlocked.Add(ref _chunks, Size(value));
    internal void Hidden<T>(T value) => Interlocked.Add(ref _hidden, Size(value));
    internal void Results<T>(T value) => Interlocked.Add(ref _results, Size(value));
    /// <summary>Hidden-state bytes the shards' own expert-group calls serialized (the shard exchange counts them where they are sent).</summary>
    internal void Exchanged(long bytes) => Interlocked.Add(ref _hidden, bytes);

    internal void EndStep() =>
        LastStep = new StepWireBytes(Interlocked.Exchange(ref _chunks, 0), Interlocked.Exchange(ref _hidden, 0), Interlocked.Exchange(ref _results, 0));
}
