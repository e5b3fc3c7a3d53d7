using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>
/// One owner's step on an attention shard walked with <see cref="ExpertExchange.Shard"/>: the pending MoE layer's
/// routing split by expert group, the requests for the groups other silos serve (built once, in the wire dtype,
/// bundling all the layer's rows that reached the group), the outputs of the groups this silo holds, and per chunk the
/// groups its tokens reached in the step. The layer's input tensor belongs to the shard's walk. Touched only in the
/// attention grain's turns and on the silo's inference thread (the grain is not reentrant).
/// </summary>
sealed class ExchangeWalk(long stepId, PayloadDtype wire, bool measureWire, int groups, int[] rowChunk, int chunkCount)
{
    public long StepId => stepId;
    public PayloadDtype Wire => wire;
    public bool MeasureWire => measureWire;
    /// <summary>Deadline on each call to another silo's group (zero: none; the gateway's deadline on the whole call bounds it).</summary>
    public TimeSpan GroupCallTimeout { get; init; }
    /// <summary>The pending MoE layer (-1 before the first).</summary>
    public int Layer { get; private set; } = -1;
    /// <summary>Per chunk, the expert groups its tokens reached so far in the step.</summary>
    public SortedSet<int>?[] Reached { get; } = new SortedSet<int>?[chunkCount];
    /// <summary>The pending layer's calls to groups this silo does not hold, in group order.</summary>
    public (int Group, ExpertRequest Request)[] Remote { get; private set; } = [];

    MoeDispatch? _dispatch;
    int[] _groups = [];                 // groups the pending layer reached, ascending
    List<int>?[] _rowsOfGroup = [];     // rows routed into each group (ascending)
    readonly HashSet<int> _local = new();
    readonly Dictionary<int, Tensor> _localOutputs = new();

    /// <summary>Takes the layer the shard stopped at: splits its rows by group and builds the other silos' requests (inference thread).</summary>
    public void Prepare(MoeDispatch dispatch, ModelHost host)
    {
        DisposeLocal();
        _dispatch = dispatch;
        Layer = dispatch.Layer;
        var routing = dispatch.Routing;
        int groupSize = host.Config.NRoutedExperts / groups;
        var rowsOfGroup = new List<int>?[groups];
        for (int t = 0; t < routing.Tokens; t++)
            for (int k = 0; k < routing.TopK; k++)
            {
                int g = routing.Expert(t, k) / groupSize;
                var rows = rowsOfGroup[g] ??= new();
                if (rows.Count == 0 || rows[^1] != t) rows.Add(t);
                if (rowChunk.Length == routing.Tokens) (Reached[rowChunk[t]] ??= new()).Add(g);
            }
        _rowsOfGroup = rowsOfGroup;
        _groups = Enumerable.Range(0, groups).Where(g => rowsOfGroup[g] is not null).ToArray();
        _local.Clear();
        var held = host.HeldGroups();
        foreach (var g in _groups)
            if (held.Contains(g) && host.GroupRanges.Length == groups) _local.Add(g);

        TensorPayload? input = null;
        var remote = new List<(int, ExpertRequest)>();
        foreach (var g in _groups.Where(g => !_local.Contains(g)))
        {
            input ??= dispatch.Input.ToPayload(wire);
            var sel = rowsOfGroup[g]!;
            var ids = new int[sel.Count * routing.TopK];
            var weights = new float[sel.Count * routing.TopK];
            for (int i = 0; i < sel.Count; i++)
            {
                routing.ExpertIds.AsSpan(sel[i] * routing.TopK, routing.TopK).CopyTo(ids.AsSpan(i * routing.TopK));
                routing.Weights.AsSpan(sel[i] * routing.TopK, routing.TopK).CopyTo(weights.AsSpan(i * routing.TopK));
            }
            remote.Add((g, new ExpertRequest(Layer, sel.Count == routing.Tokens ? input : input.SelectRows(sel), routing.TopK, ids, weights)));
        }
        Remote = remote.ToArray();
    }

    /// <summary>Runs the groups this silo holds, in place (inference thread); kept until <see cref="Sum"/>.</summary>
    public void RunLocal(DeepseekV2Model model, ModelHost host, SiloTelemetry telemetry)
    {
        foreach (var g in _groups.Where(_local.Contains))
        {
            using var scope = NewDisposeScope();
            _localOutputs[g] = Local(model, host, telemetry, g).DetachFromDisposeScope();
        }
    }

    Tensor Local(DeepseekV2Model model, ModelHost host, SiloTelemetry telemetry, int g)
    {
        var dispatch = _dispatch ?? throw new InvalidOperationException("no MoE layer is pending");
        var range = host.GroupRanges[g];
        var experts = model.ExpertGroups.FirstOrDefault(e => e.Range == range)
            ?? throw new InvalidOperationException($"expert group {g} ({range}) is not loaded on this silo");
        var tag = new KeyValuePair<string, object?>("group", g);
        telemetry.ExpertCalls.Add(1, tag);
        telemetry.ExpertTokens.Add(_rowsOfGroup[g]!.Count, tag);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var output = experts.Forward(Layer, dispatch.Input, dispatch.Routing);
        telemetry.ComputeMs.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("kind", "experts"));
        return output;
    }

    /// <summary>
    /// The layer's routed output [N, d] in the compute dtype: every reached group's part added in group order (the order
    /// model-core adds them in, so float32 results are the same bits); other silos' rows widened and put back in place.
    /// Runs inside the caller's dispose scope (inference thread).
    /// </summary>
    public Tensor Sum(DeepseekV2Model model, ModelHost host, SiloTelemetry telemetry, TensorPayload[] remoteOutputs)
    {
        var dispatch = _dispatch ?? throw new InvalidOperationException("no MoE layer is pending");
        var x = dispatch.Input;
        Tensor? sum = null;
        int next = 0;
        foreach (var g in _groups)
        {
            Tensor part;
            if (_local.Contains(g)) part = _localOutputs.TryGetValue(g, out var done) ? done : Local(model, host, telemetry, g);
            else
            {
                var rows = _rowsOfGroup[g]!;
                var output = remoteOutputs[next++].ToTensor(x.dtype);
                part = rows.Count == x.shape[0] ? output
                    : zeros_like(x).index_copy_(0, tensor(rows.Select(r => (long)r).ToArray(), ScalarType.Int64), output);
            }
            sum = sum is null ? part : sum.Add(part);
        }
        if (next != remoteOutputs.Length) throw new InvalidOperationException($"{remoteOutputs.Length} expert-group outputs for {next} calls");
        return sum ?? zeros_like(x);
    }

    /// <summary>Frees the outputs of this silo's groups (the layer's input stays with the shard's walk).</summary>
    public void DisposeLocal()
    {
        foreach (var t in _localOutputs.Values) t.Dispose();
        _localOutputs.Clear();
    }
}
