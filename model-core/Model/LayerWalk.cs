using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>The routed-expert work a MoE layer hands out: its input x [N, d] (post-attention norm) and the routing.</summary>
public sealed record MoeDispatch(int Layer, Tensor Input, Routing Routing);

/// <summary>
/// One forward step of the attention host, walked layer by layer so the routed experts can run elsewhere:
/// <see cref="Advance"/> embeds the tokens (first call) or folds in the routed experts' output of the pending
/// MoE layer, then runs attention, dense MLPs and the next gate until a MoE layer needs its routed experts
/// (returned as a <see cref="MoeDispatch"/>), or until the last layer (returns null; logits are ready).
/// Tensors kept between calls belong to the walk; dispose it at the end of the step.
/// </summary>
public sealed class LayerWalk : IDisposable
{
    readonly DeepseekV2Model _model;
    readonly StepBatch _batch;
    readonly AttentionMode _mode;
    readonly DeviceLimit? _limit;
    bool _started;
    Tensor? _pending;       // [N, d] residual + shared experts of the dispatched layer
    Tensor? _input;         // [N, d] the dispatched layer's routed-expert input
    Tensor? _logits;
    int _layer;

    readonly StepProfile? _profile;

    public LayerWalk(DeepseekV2Model model, IReadOnlyList<SequenceChunk> chunks, AttentionMode mode = AttentionMode.Auto, DeviceLimit? limit = null, StepProfile? profile = null)
    {
        _profile = profile;
        _model = model;
        _mode = mode;
        _limit = limit;
        using var scope = NewDisposeScope();
        _batch = new StepBatch(model.Cache ?? throw new InvalidOperationException("no latent cache on this host"), chunks, mode);
    }

    /// <summary>
    /// Continues the step. <paramref name="routedOutput"/> [N, d] is the sum of the routed experts' outputs for the
    /// MoE layer returned by the previous call (null on the first call).
    /// </summary>
    public MoeDispatch? Advance(Tensor? routedOutput)
    {
        if (_logits is not null) throw new InvalidOperationException("the step is finished");
        using var scope = NewDisposeScope();
        Tensor h;
        if (!_started)
        {
            _started = true;
            h = Measure(StepProfile.Embed, () => _model.Embed(_batch.Chunks.SelectMany(c => c.Tokens).ToArray()));
        }
        else
        {
            if (routedOutput is null) throw new ArgumentNullException(nameof(routedOutput), "the dispatched MoE layer's routed output is required");
            h = Measure(StepProfile.Fold, () => _pending!.Add(routedOutput));           // residual + (shared + routed) of the pending layer
            _pending!.Dispose();
            _input!.Dispose();
            _pending = _input = null;
        }
        for (; _layer < _model.Config.NumHiddenLayers; _layer++)
        {
            var input = h;
            h = Measure(StepProfile.Attention, () => _model.Attention(_layer, input, _batch, _mode, _profile));
            var attendedH = h;
            var x = Measure(StepProfile.FfnNorm, () => _model.FfnInput(_layer, attendedH));
            if (!_model.IsMoeLayer(_layer))
            {
                var attended = h;
                h = Measure(StepProfile.DenseMlp, () => attended.Add(_model.Dense(_layer, x)));
                continue;
            }
            var routing = Measure(StepProfile.Gate, () => _model.Route(_layer, x, _limit));
            var shared = Measure(StepProfile.SharedExperts, () => _model.Shared(_layer, x));
            Replace(ref _pending, (shared is null ? h : h.Add(shared)).DetachFromDisposeScope());
            _input = x.DetachFromDisposeScope();
            return new MoeDispatch(_layer++, _input, routing);
        }
        _batch.Commit(_model.Cache!);
        var last = h;
        _logits = Measure(StepProfile.Logits, () => _model.Logits(last.index_select(0, tensor(_batch.LogitRows(), ScalarType.Int64)))).DetachFromDisposeScope();
        return null;
    }

    /// <summary>The step's logits [rows, V]; the caller owns them.</summary>
    public Tensor TakeLogits()
    {
        var l = _logits ?? throw new InvalidOperationException("the step is not finished");
        _logits = null;
        return l;
    }

    T Measure<T>(string phase, Func<T> work) => _profile is null ? work() : _profile.Measure(phase, work);

    static void Replace(ref Tensor? slot, Tensor value)
    {
        slot?.Dispose();
        slot = value;
    }

    public void Dispose()
    {
        _pending?.Dispose();
        _input?.Dispose();
        _logits?.Dispose();
        _batch.Dispose();
    }
}
