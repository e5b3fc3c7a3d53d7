namespace Grid.ModelCore.Sampling;

/// <summary>Per-request sampling settings. Temperature 0 is greedy; TopK &lt;= 0 and TopP 1 turn those filters off.</summary>
public sealed record SamplingParams
{
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    public int TopK { get; init; }
    public long? Seed { get; init; }
    /// <summary>How many top alternatives to report per token (0 = only the chosen token's logprob).</summary>
    public int Logprobs { get; init; }

    public bool IsGreedy => Temperature <= 0 || TopK == 1;

    public static SamplingParams Greedy { get; } = new() { Temperature = 0 };
}

/// <summary>One sampled token with its log-probability and the top alternatives (log-softmax of the raw logits).</summary>
public sealed record SampledToken(int Token, double Logprob, (int Id, double Logprob)[] Top);

/// <summary>
/// Samples one sequence's tokens from float32 logits on the CPU in double precision: greedy (ties to the
/// lowest id), or temperature, then top-k, then top-p (nucleus), then a draw from the sequence's own seeded
/// generator, so the same seed gives the same tokens whatever else is in the batch.
/// </summary>
public sealed class Sampler
{
    readonly SamplingParams _p;
    readonly SplitMix64 _rng;

    public Sampler(SamplingParams p)
    {
        _p = p;
        _rng = new SplitMix64(p.Seed is long s ? (ulong)s : (ulong)Random.Shared.NextInt64());
    }

    public SampledToken Sample(ReadOnlySpan<float> logits)
    {
        int token = _p.IsGreedy ? Argmax(logits) : Draw(logits);
        var logZ = LogSumExp(logits);
        return new SampledToken(token, logits[token] - logZ, TopLogprobs(logits, _p.Logprobs, logZ));
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

    int Draw(ReadOnlySpan<float> logits)
    {
        double t = _p.Temperature;
        int k = _p.TopK > 0 ? Math.Min(_p.TopK, logits.Length) : logits.Length;
        // Candidates in descending logit order (only the top k are needed).
        int[] candidates = k < logits.Length ? TopIds(logits, k) : SortedIds(logits);
        double max = logits[candidates[0]] / t;
        var probs = new double[candidates.Length];
        double total = 0;
        for (int i = 0; i < candidates.Length; i++) total += probs[i] = Math.Exp(logits[candidates[i]] / t - max);
        int keep = candidates.Length;
        if (_p.TopP < 1.0)
        {
            double cumulative = 0;
            for (int i = 0; i < candidates.Length; i++)
            {
                cumulative += probs[i] / total;
                if (cumulative >= _p.TopP) { keep = i + 1; break; }
            }
        }
        double mass = 0;
        for (int i = 0; i < keep; i++) mass += probs[i];
        double u = _rng.NextDouble() * mass;
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

/// <summary>SplitMix64: a small, fast, portable generator, so seeded sampling is identical on every platform.</summary>
public sealed class SplitMix64(ulong seed)
{
    ulong _state = seed;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
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
