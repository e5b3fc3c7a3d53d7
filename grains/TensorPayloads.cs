using Grid.Grains.Contracts;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>Between the wire contract (no TorchSharp) and model-core: tensors, chunks and sampled tokens.</summary>
public static class TensorPayloads
{
    public static TensorPayload ToPayload(this Tensor t) =>
        new((int)t.shape[0], (int)t.shape[1], ToPayloadDtype(t.dtype), TensorBytes.ToBytes(t));

    public static Tensor ToTensor(this TensorPayload p) => TensorBytes.FromBytes(p.Data, ToScalarType(p.Dtype), p.Rows, p.Cols);

    /// <summary>The payload as a tensor in <paramref name="computeDtype"/> (widened where it travelled in 16 bits).</summary>
    public static Tensor ToTensor(this TensorPayload p, ScalarType computeDtype)
    {
        var t = p.ToTensor();
        return t.dtype == computeDtype ? t : t.to(computeDtype);
    }

    /// <summary>The tensor as a payload in the wire dtype <paramref name="wire"/> (narrowed at this edge when it differs).</summary>
    public static TensorPayload ToPayload(this Tensor t, PayloadDtype wire)
    {
        var dtype = ToScalarType(wire);
        return t.dtype == dtype ? t.ToPayload() : t.to(dtype).ToPayload();
    }

    public static PayloadDtype ToPayloadDtype(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => PayloadDtype.Float32,
        ScalarType.BFloat16 => PayloadDtype.BFloat16,
        ScalarType.Float16 => PayloadDtype.Float16,
        _ => throw new NotSupportedException($"no wire form for {dtype}"),
    };

    public static ScalarType ToScalarType(PayloadDtype dtype) => dtype switch
    {
        PayloadDtype.Float32 => ScalarType.Float32,
        PayloadDtype.BFloat16 => ScalarType.BFloat16,
        PayloadDtype.Float16 => ScalarType.Float16,
        _ => throw new NotSupportedException($"payload dtype {dtype}"),
    };

    public static ChunkInput ToInput(this StepChunk c) => new(c.SequenceId, c.Position, c.Tokens,
        c.Sample is { } s ? new SamplingSpec(s.Params.Temperature, s.Params.TopP, s.Params.TopK, s.Params.Logprobs, s.Key.Seed, s.Key.Choice, s.Key.Index)
        {
            Processing = ToSpec(s.Params, s.Key.Index),
        } : null,
        c.ScoreNext, c.ScoreTop)
    {
        Constraint = c.Constraint is { } k ? new ConstraintSpec(k.Schema, k.Strict, k.PromptLength, k.MaxTokens, k.EndTokens) : null,
    };

    /// <summary>The request's logit processing, or null when it has none (plain requests send nothing more than before).</summary>
    static LogitProcessingSpec? ToSpec(SamplingParams p, int index)
    {
        if (!p.ProcessesLogits && p.MinP <= 0) return null;
        bool masking = index < p.MinTokens;   // the stop ids matter only until min_tokens are generated
        return new LogitProcessingSpec(p.PresencePenalty, p.FrequencyPenalty, p.RepetitionPenalty, p.MinP,
            masking ? p.MinTokens : 0, masking ? p.StopTokenIds : [],
            p.LogitBias.Select(b => b.Token).ToArray(), p.LogitBias.Select(b => b.Bias).ToArray());
    }

    static SamplingParams ToParams(SamplingSpec s)
    {
        var p = new SamplingParams { Temperature = s.Temperature, TopP = s.TopP, TopK = s.TopK, Logprobs = s.Logprobs, Seed = s.Seed };
        if (s.Processing is not { } x) return p;
        return p with
        {
            PresencePenalty = x.PresencePenalty,
            FrequencyPenalty = x.FrequencyPenalty,
            RepetitionPenalty = x.RepetitionPenalty,
            MinP = x.MinP,
            MinTokens = x.MinTokens,
            StopTokenIds = x.StopTokenIds,
            LogitBias = x.BiasTokens.Zip(x.BiasValues, (t, b) => new TokenBias(t, b)).ToArray(),
        };
    }

    public static StepChunk ToChunk(this ChunkInput c) => new(c.SequenceId, c.Position, c.Tokens)
    {
        Sample = c.Sample is { } s ? new TokenSampling(ToParams(s), new DrawKey(s.Seed, s.Choice, s.Index)) : null,
        ScoreNext = c.ScoreNext,
        ScoreTop = c.ScoreTop,
        Constraint = c.Constraint is { } k ? new TokenConstraint(k.Schema, k.Strict, k.PromptLength, k.MaxTokens, k.EndTokens) : null,
    };

    public static ChunkOutput ToOutput(this ChunkResult r) => new(r.Next?.ToWire(), r.Scored.Select(ToWire).ToArray()) { LatentBytes = r.LatentBytes };

    public static ChunkResult ToResult(this ChunkOutput o) => new(o.Next?.ToToken(), o.Scored.Select(ToToken).ToArray()) { LatentBytes = o.LatentBytes };

    static TokenLogprobs ToWire(this SampledToken t) =>
        new(t.Token, t.Logprob, t.Top.Select(x => x.Id).ToArray(), t.Top.Select(x => x.Logprob).ToArray());

    static SampledToken ToToken(this TokenLogprobs t) =>
        new(t.Token, t.Logprob, t.TopIds.Zip(t.TopLogprobs, (id, lp) => (id, lp)).ToArray());
}
