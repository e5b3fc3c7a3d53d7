using System.Diagnostics;

namespace Grid.ModelCore.Model;

/// <summary>
/// Wall time of a forward step split by phase (CPU tensor ops are synchronous, so a stopwatch around each phase
/// measures it). Pass one to <see cref="DeepseekV2Model.Forward"/> or <see cref="LayerWalk"/> to accumulate.
/// </summary>
public sealed class StepProfile
{
    public const string Embed = "embed", Attention = "attention", Gate = "gate", SharedExperts = "shared_experts",
        DenseMlp = "dense_mlp", RoutedExperts = "routed_experts", Logits = "logits";

    /// <summary>Finer phases inside <see cref="Attention"/> (decode steps; counted within it) and after it.</summary>
    public const string AttentionNorm = "attention.norm", AttentionProject = "attention.project", AttentionCache = "attention.cache",
        AttentionScores = "attention.scores", AttentionOutput = "attention.o_proj", Residual = "attention.residual",
        FfnNorm = "ffn_norm", Fold = "fold_routed";

    readonly Dictionary<string, TimeSpan> _time = new();

    public IReadOnlyDictionary<string, TimeSpan> Time => _time;

    public void Add(string phase, TimeSpan elapsed) =>
        _time[phase] = _time.TryGetValue(phase, out var t) ? t + elapsed : elapsed;

    public T Measure<T>(string phase, Func<T> work)
    {
        var sw = Stopwatch.StartNew();
        var result = work();
        Add(phase, sw.Elapsed);
        return result;
    }

    public void Clear() => _time.Clear();
}
