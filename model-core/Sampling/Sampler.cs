namespace Grid.ModelCore.Sampling;

/// <summary>Per-request sampling settings. Temperature 0 (or below 1e-5) is greedy; TopK &lt;= 0 and TopP 1 turn those filters off.</summary>
public sealed record SamplingParams
{
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    public int TopK { get; init; }
    /// <summary>The request's seed; without one the engine draws a random seed when the request arrives.</summary>
    public long? Seed { get; init; }
    /// <summary>How many top alternatives to report per token (0 = only the chosen token's logprob).</summary>
    public int Logprobs { get; init; }
    /// <summary>Subtracted once from the logit of every token that occurs in the generated tokens (OpenAI / vLLM, [-2, 2]).</summary>
    public double PresencePenalty { get; init; }
    /// <summary>Subtracted from a token's logit once per occurrence in the generated tokens (OpenAI / vLLM, [-2, 2]).</summary>
    public double FrequencyPenalty { get; init; }
    /// <summary>Tokens of the prompt or the output: positive logits divided by it, negative ones multiplied (vLLM / CTRL; &gt; 0, 1 = off).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>After temperature, drop tokens whose probability is below MinP times the most likely token's ([0, 1], 0 = off).</summary>
    public double MinP { get; init; }
    /// <summary>While fewer tokens than this are generated, <see cref="StopTokenIds"/> are masked out (-inf).</summary>
    public int MinTokens { get; init; }
    /// <summary>The token ids that end the sequence (EOS unless ignored, plus stop_token_ids): masked before <see cref="MinTokens"/>.</summary>
    public int[] StopTokenIds { get; init; } = [];
    /// <summary>Added to the logits of the given tokens (OpenAI's logit_bias, already clamped to [-100, 100]).</summary>
    public TokenBias[] LogitBias { get; init; } = [];

    /// <summary>Whether anything changes the logits before temperature: penalties, bias or a min_tokens mask. Off: the raw logits are sampled.</summary>
    public bool ProcessesLogits =>
        PresencePenalty != 0 || FrequencyPenalty != 0 || RepetitionPenalty != 1.0 || LogitBias.Length > 0 || (MinTokens > 0 && StopTokenIds.Length > 0);

    /// <summary>Whether the penalties need the sequence's token history.</summary>
    public bool NeedsHistory => PresencePenalty != 0 || FrequencyPenalty != 0 || RepetitionPenalty != 1.0;

    /// <summary>Below this temperature sampling is greedy (as vLLM does): dividing logits by it would overflow to infinity.</summary>
    public const double GreedyBelowTemperature = 1e-5;

    public bool IsGreedy => Temperature < GreedyBelowTemperature || TopK == 1;

    public static SamplingParams Greedy { get; } = new() { Temperature = 0 };
}

/// <summary>
/// Where a draw sits: the request's seed, the choice (0..n-1) and the index of the generated token. The random
/// number of a draw depends on these three alone, so a sequence that is recomputed on another shard, preempted
/// or retried draws the same tokens, whatever else runs in its batch.
/// </summary>
public readonly record struct DrawKey(long Seed, int Choice, int Index)
{
    /// <summary>A uniform number in [0, 1) that is a pure function of (seed, choice, index).</summary>
    public double Uniform()
    {
        ulong z = SplitMix64.Mix((ulong)Seed);
        z = SplitMix64.Mix(z ^ (0x9E3779B97F4A7C15UL * (ulong)(uint)(Choice + 1)));
        z = SplitMix64.Mix(z ^ (0xC2B2AE3D27D4EB4FUL * (ulong)(uint)(Index + 1)));
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}

/// <summary>One logit_bias entry: <paramref name="Bias"/> is added to token <paramref name="Token"/>'s logit.</summary>
public readonly record struct TokenBias(int Token, float Bias);

/// <summary>One sampled token with its log-probability and the top alternatives (log-softmax of the raw logits).</summary>
public sealed record SampledToken(int Token, double Logprob, (int Id, double Logprob)[] Top);

/// <summary>
/// Samples tokens from float32 logits on the CPU, in vLLM's order: logit processing (<see cref="LogitProcessing"/>:
/// min_tokens mask, logit_bias, repetition/frequency/presence penalties) on the logits, then greedy (ties to the lowest
/// id) or temperature, min-p, top-k, top-p (nucleus) and one position-addressed draw (<see cref="DrawKey"/>).
/// Reported logprobs are of the raw logits (vLLM's default <c>raw_logprobs</c>). Runs where the logits are: on the
/// attention shard.
/// </summary>
public static class Sampler
{
    /// <param name="history">The sequence's tokens so far, prompt then generated (the last <c>key.Index</c> are the generated
    /// ones); needed only when <see cref="SamplingParams.NeedsHistory"/>.</param>
    public static SampledToken Sample(ReadOnlySpan<float> logits, SamplingParams p, DrawKey key, ReadOnlySpan<int> history = default)
    {
        ReadOnlySpan<float> processed = logits;
        if (p.ProcessesLogits)
        {
            var copy = logits.ToArray();
            LogitProcessing.Apply(copy, p, key.Index, history);
            processed = copy;
        }
        int token = p.IsGreedy ? Argmax(processed) : Draw(processed, p, key.Uniform());
        return Score(logits, token, p.Logprobs);
    }

    /// <summary>The logprob of <paramref name="token"/> under <paramref name="logits"/> and the <paramref name="top"/> most likely tokens.</summary>
    public static SampledToken Score(ReadOnlySpan<float> logits, int token, int top)
    {
        var logZ = LogSumExp(logits);
        return new SampledToken(token, logits[token] - logZ, TopLogprobs(logits, top, logZ));
    }

    public static int Argmax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        double sum = 0;
        foreach (var l in logits) sum += Math.Exp(l - max);
        return max + Math.Log(sum);
    }

    /// <summary>The <paramref name="n"/> most likely tokens, descending (ties: lower id first).</summary>
    public static (int Id, double Logprob)[] TopLogprobs(ReadOnlySpan<float> logits, int n, double logZ)
    {
        if (n <= 0) return [];
        var ids = TopIds(logits, n);
        var top = new (int Id, double Logprob)[ids.Length];
        for (int i = 0; i < ids.Length; i++) top[i] = (ids[i], logits[ids[i]] - logZ);
        return top;
    }

    static int[] TopIds(ReadOnlySpan<float> logits, int n)
    {
        n = Math.Min(n, logits.Length);
        var best = new List<int>(n + 1);
        for (int i = 0; i < logits.Length; i++)
        {
            if (best.Count == n && logits[i] <= logits[best[^1]]) continue;
            int at = best.Count;
            while (at > 0 && logits[best[at - 1]] < logits[i]) at--;
            best.Insert(at, i);
            if (best.Count > n) best.RemoveAt(n);
        }
        return best.ToArray();
    }

    /// <summary>Temperature, min-p, top-k, top-p, then the candidate where <paramref name="uniform"/> falls in the kept mass.</summary>
    static int Draw(ReadOnlySpan<float> logits, SamplingParams p, double uniform)
    {
        double t = p.Temperature;
        int k = p.TopK > 0 ? Math.Min(p.TopK, logits.Length) : logits.Length;
        // Candidates in descending logit order (only the top k are needed).
        int[] candidates = k < logits.Length ? TopIds(logits, k) : SortedIds(logits);
        double max = logits[candidates[0]] / t;
        var probs = new double[candidates.Length];
        for (int i = 0; i < candidates.Length; i++) probs[i] = Math.Exp(logits[candidates[i]] / t - max);
        // min-p (before top-k/top-p, as vLLM): probabilities below MinP x the largest one (probs[0] = 1 here) are dropped;
        // candidates are in descending order, so that keeps a prefix. Dropping them from the top-k set is the same cut.
        int count = candidates.Length;
        if (p.MinP > 0)
            while (count > 1 && probs[count - 1] < p.MinP * probs[0]) count--;
        double total = 0;
        for (int i = 0; i < count; i++) total += probs[i];
        int keep = count;
        if (p.TopP < 1.0)
        {
            double cumulative = 0;
            for (int i = 0; i < count; i++)
            {
                cumulative += probs[i] / total;
                if (cumulative >= p.TopP) { keep = i + 1; break; }
            }
        }
        double mass = 0;
        for (int i = 0; i < keep; i++) mass += probs[i];
        double u = uniform * mass;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return candidates[i];
        }
        return candidates[keep - 1];
    }

    static int[] SortedIds(ReadOnlySpan<float> logits)
    {
        var ids = Enumerable.Range(0, logits.Length).ToArray();
        var keys = logits.ToArray();
        Array.Sort(ids, (a, b) => keys[b] != keys[a] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b));
        return ids;
    }
}

/// <summary>SplitMix64: a small, fast, portable generator and mixer, so seeded sampling is identical on every platform.</summary>
public sealed class SplitMix64(ulong seed)
{
    ulong _state = seed;

    /// <summary>The SplitMix64 finaliser: a bijective mix of 64 bits.</summary>
    public static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong Next()
    {
        ulong z = Mix(_state);
        _state += 0x9E3779B97F4A7C15UL;
        return z;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Standard normal (Box-Muller).</summary>
    public double NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
