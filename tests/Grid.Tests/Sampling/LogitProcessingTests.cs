using Grid.ModelCore.Sampling;
using Xunit;

namespace Grid.Tests.Sampling;

/// <summary>
/// vLLM's logit processing on known logits, value by value: repetition penalty over prompt + output, frequency and
/// presence penalties over the output only, logit_bias, the min_tokens mask, their order, and min-p in the draw.
/// </summary>
public sealed class LogitProcessingTests
{
    static float[] Apply(float[] logits, SamplingParams p, int generated, int[] history)
    {
        var copy = logits.ToArray();
        LogitProcessing.Apply(copy, p, generated, history);
        return copy;
    }

    [Fact]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOfPromptAndOutputTokens()
    {
        float[] logits = [2.0f, -1.0f, 3.0f, -0.5f, 1.0f, 0.0f];
        // Prompt [0, 1, 1], output [3]: tokens 0, 1 and 3 were seen (1 twice: penalised once); 2, 4, 5 not.
        var p = new SamplingParams { RepetitionPenalty = 2.0 };
        var result = Apply(logits, p, generated: 1, history: [0, 1, 1, 3]);
        Assert.Equal([1.0f, -2.0f, 3.0f, -1.0f, 1.0f, 0.0f], result);
    }

    [Fact]
    public void FrequencyAndPresencePenaltiesCountOnlyGeneratedTokens()
    {
        float[] logits = [1.0f, 1.0f, 1.0f, 1.0f];
        // Prompt [0, 0, 1], output [1, 2, 2, 2]: token 0 only in the prompt (untouched), 1 once, 2 three times.
        var p = new SamplingParams { FrequencyPenalty = 0.5, PresencePenalty = 0.25 };
        var result = Apply(logits, p, generated: 4, history: [0, 0, 1, 1, 2, 2, 2]);
        Assert.Equal(1.0f, result[0]);
        Assert.Equal(1.0f - 0.5f * 1 - 0.25f, result[1]);
        Assert.Equal(1.0f - 0.5f * 3 - 0.25f, result[2]);
        Assert.Equal(1.0f, result[3]);
        // Negative penalties encourage repetition by the same amounts.
        var encouraged = Apply(logits, new SamplingParams { FrequencyPenalty = -1, PresencePenalty = -2 }, 4, [0, 0, 1, 1, 2, 2, 2]);
        Assert.Equal([1.0f, 1.0f + 1 + 2, 1.0f + 3 + 2, 1.0f], encouraged);
    }

    [Fact]
    public void LogitBiasIsAddedBeforeTheRepetitionPenalty()
    {
        float[] logits = [-1.0f, 0.5f, 0.0f];
        var p = new SamplingParams { LogitBias = [new TokenBias(0, 3f), new TokenBias(2, -100f)], RepetitionPenalty = 2.0 };
        var result = Apply(logits, p, generated: 0, history: [0]);
        // Token 0: -1 + 3 = 2 (positive now), then divided by 2 (it is in the prompt).
        Assert.Equal([1.0f, 0.5f, -100.0f], result);
    }

    [Fact]
    public void MinTokensMasksStopTokensUntilEnoughAreGenerated()
    {
        float[] logits = [5.0f, 1.0f, 4.0f];
        var p = new SamplingParams { MinTokens = 3, StopTokenIds = [0, 2], LogitBias = [new TokenBias(0, 100f)] };
        for (int generated = 0; generated < 3; generated++)
        {
            var masked = Apply(logits, p, generated, []);
            Assert.Equal([float.NegativeInfinity, 1.0f, float.NegativeInfinity], masked);   // a bias cannot lift the mask
            Assert.Equal(1, Sampler.Sample(logits, p with { Temperature = 0 }, new DrawKey(1, 0, generated)).Token);
        }
        Assert.Equal([105.0f, 1.0f, 4.0f], Apply(logits, p, 3, []));
        Assert.Equal(0, Sampler.Sample(logits, p with { Temperature = 0 }, new DrawKey(1, 0, 3)).Token);
    }

    [Fact]
    public void GreedyPicksTheProcessedArgmaxButReportsRawLogprobs()
    {
        float[] logits = [3.0f, 2.9f, 0.0f];
        var p = new SamplingParams { Temperature = 0, PresencePenalty = 0.2, Logprobs = 3 };
        var raw = Sampler.Sample(logits, SamplingParams.Greedy with { Logprobs = 3 }, default, [7, 0]);
        var penalised = Sampler.Sample(logits, p, new DrawKey(0, 0, 1), [7, 0]);   // token 0 was generated once
        Assert.Equal(0, raw.Token);
        Assert.Equal(1, penalised.Token);
        // Logprobs are of the raw logits (vLLM's default): the same alternatives with the same values.
        Assert.Equal(raw.Top, penalised.Top);
        Assert.Equal(raw.Top[1].Logprob, penalised.Logprob, 12);
    }

    [Fact]
    public void MinPDropsTokensBelowItsShareOfTheMostLikelyOneAfterTemperature()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.05: min_p 0.2 keeps p >= 0.1 (tokens 0..2) and renormalises over them.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var p = new SamplingParams { Temperature = 1.0, MinP = 0.2, Seed = 5 };
        var counts = new int[4];
        const int draws = 20000;
        for (int i = 0; i < draws; i++) counts[Sampler.Sample(logits, p, new DrawKey(5, 0, i)).Token]++;
        Assert.Equal(0, counts[3]);
        Assert.InRange(counts[0] / (double)draws, 0.5 / 0.95 - 0.015, 0.5 / 0.95 + 0.015);
        Assert.InRange(counts[2] / (double)draws, 0.15 / 0.95 - 0.015, 0.15 / 0.95 + 0.015);
        // Without min_p the fourth token is drawn about 5% of the time (the filter is what removed it).
        var plain = Enumerable.Range(0, draws).Count(i => Sampler.Sample(logits, p with { MinP = 0 }, new DrawKey(5, 0, i)).Token == 3);
        Assert.InRange(plain / (double)draws, 0.035, 0.065);
        // Temperature comes first: at temperature 2 the fourth token's share of the largest is sqrt(0.1) > 0.2, so it stays.
        Assert.Contains(Enumerable.Range(0, 2000), i => Sampler.Sample(logits, p with { Temperature = 2.0 }, new DrawKey(5, 0, i)).Token == 3);
    }

    [Fact]
    public void DefaultsProcessNothingAndDrawsDependOnlyOnSeedChoiceAndIndex()
    {
        var p = new SamplingParams { Temperature = 0.8, FrequencyPenalty = 1.0, RepetitionPenalty = 1.3, Seed = 3 };
        Assert.False(new SamplingParams().ProcessesLogits);
        Assert.False((SamplingParams.Greedy with { MinTokens = 5 }).ProcessesLogits);   // no stop ids: nothing to mask
        Assert.True(p.ProcessesLogits && p.NeedsHistory);
        var rng = new SplitMix64(11);
        var logits = Enumerable.Range(0, 64).Select(_ => (float)rng.NextGaussian() * 3).ToArray();
        int[] history = [1, 2, 3, 4, 5, 5, 5, 9];
        var first = Enumerable.Range(0, 50).Select(i => Sampler.Sample(logits, p, new DrawKey(3, 1, 3), history).Token).Distinct().ToList();
        Assert.Single(first);
        // The penalties change what is drawn (the test would pass trivially otherwise): over many indexes, the
        // penalised token 5 is drawn less often than without penalties (draws over 4000 choices at the same index).
        int With(SamplingParams q) => Enumerable.Range(0, 4000).Count(c => Sampler.Sample(logits, q, new DrawKey(3, c, 3), history).Token == 5);
        logits[5] = logits.Max();
        Assert.True(With(p) < With(p with { FrequencyPenalty = 0, RepetitionPenalty = 1.0 }));
    }
}
