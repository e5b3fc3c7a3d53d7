using System.Diagnostics;
using Grid.ModelCore.Cache;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using static TorchSharp.torch;

namespace Grid.Benchmarks;

/// <summary>Model-core figures: plain matmul ceiling, prefill FLOP/s, decode tokens/s, the decode step split, MLA absorbed vs naive.</summary>
public static class ModelCoreBench
{
    /// <summary>
    /// The practical ceiling: a plain float32 n³ matmul, the median of <paramref name="reps"/> timed runs after a
    /// warm-up of ~0.5 s (median like the prefill it is compared with, so both describe sustained throughput).
    /// </summary>
    public static double MatmulGflops(int n = 1024, int reps = 10)
    {
        using var _ = NewDisposeScope();
        var a = randn(n, n);
        var b = randn(n, n);
        var warm = Stopwatch.StartNew();
        while (warm.Elapsed.TotalSeconds < 0.5) a.matmul(b).Dispose();
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        return 2.0 * n * n * n / Median(times) / 1e9;
    }

    public static double Median(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    public static double Percentile(IEnumerable<double> values, double p)
    {
        var v = values.Order().ToArray();
        if (v.Length == 0) return double.NaN;
        var rank = p / 100 * (v.Length - 1);
        int lo = (int)Math.Floor(rank), hi = (int)Math.Ceiling(rank);
        return v[lo] + (v[hi] - v[lo]) * (rank - lo);
    }

    /// <summary>The standard prompt: BOS then deterministic ids.</summary>
    public static int[] Prompt(ModelConfig c, int length, int salt = 0)
    {
        var rng = new SplitMix64((ulong)(1234 + salt));
        var ids = new int[length];
        ids[0] = c.BosTokenId ?? 0;
        for (int i = 1; i < length; i++) ids[i] = (int)(rng.Next() % (ulong)Math.Min(c.VocabSize, c.BosTokenId ?? c.VocabSize));
        return ids;
    }

    /// <summary>Multiply-adds of a forward pass over <paramref name="tokens"/> new tokens after <paramref name="context"/> cached ones (naive attention).</summary>
    public static double PrefillFlops(ModelConfig c, int tokens, int context = 0)
    {
        double d = c.HiddenSize, h = c.NumAttentionHeads, macs = 0;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            macs += c.QLoraRank is int q ? d * q + q * h * c.QHeadDim : d * h * c.QHeadDim;
            macs += d * c.LatentDim + h * c.VHeadDim * d;
            if (c.IsMoeLayer(l))
                macs += d * c.NRoutedExperts + 3.0 * d * c.MoeIntermediateSize * (c.NumExpertsPerTok + c.NSharedExperts);
            else
                macs += 3.0 * d * c.IntermediateSize;
        }
        macs *= tokens;
        // Naive MLA: expand every cached latent into keys and values, then scores and values over the causal context.
        double total = context + tokens;
        double avgContext = context + (tokens + 1) / 2.0;
        macs += c.NumHiddenLayers * (total * c.KvLoraRank * h * (c.QkNopeHeadDim + c.VHeadDim) + tokens * avgContext * h * (c.QHeadDim + c.VHeadDim));
        macs += tokens == 0 ? 0 : d * c.VocabSize; // lm_head on the last token only
        return 2 * macs;
    }

    /// <param name="MinorFaults">Page faults per timed prefill (/proc/self/stat): pages of freshly mapped memory touched.</param>
    public sealed record PrefillResult(int Tokens, double Seconds, double TokensPerSecond, double Gflops, double MinorFaults);

    /// <summary>This process's minor page faults so far (Linux; 0 elsewhere).</summary>
    public static long MinorFaults()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        var stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[7], System.Globalization.CultureInfo.InvariantCulture);   // field 10, minflt
    }

    public static PrefillResult Prefill(DeepseekV2Model model, int tokens, int reps)
    {
        var prompt = Prompt(model.Config, tokens);
        var times = new List<double>();
        long faults = 0;
        for (int i = 0; i < reps + 1; i++)
        {
            var seq = model.Cache!.Create();
            long faultsBefore = MinorFaults();
            var sw = Stopwatch.StartNew();
            using (model.Forward([new SequenceChunk(seq, prompt)])) { }
            if (i > 0) // the first run warms up
            {
                times.Add(sw.Elapsed.TotalSeconds);
                faults += MinorFaults() - faultsBefore;
            }
            model.Cache.Release(seq);
        }
        double s = Median(times);
        return new PrefillResult(tokens, s, tokens / s, PrefillFlops(model.Config, tokens) / s / 1e9, (double)faults / reps);
    }

    public sealed record DecodeResult(int Batch, int Context, int Steps, double Seconds, double TokensPerSecond, Dictionary<string, double> SplitMs)
    {
        public double StepMs => Seconds * 1000 / Steps;
    }

    /// <summary>Prefills <paramref name="batch"/> prompts of <paramref name="context"/> tokens, then times greedy decode steps of all of them together.</summary>
    public static DecodeResult Decode(DeepseekV2Model model, int batch, int context, int steps, AttentionMode mode = AttentionMode.Auto)
    {
        var (seqs, next) = StartSequences(model, batch, context);
        try { return TimeDecode(model, seqs, next, steps, mode); }
        finally { foreach (var q in seqs) model.Cache!.Release(q); }
    }

    /// <summary>New sequences holding <paramref name="context"/> prompt tokens each (prefilled in chunks of at most
    /// <paramref name="chunk"/> tokens), and each one's greedy next token. The caller releases them.</summary>
    public static (LatentSequence[] Sequences, int[] Next) StartSequences(DeepseekV2Model model, int batch, int context, int chunk = 512)
    {
        var seqs = Enumerable.Range(0, batch).Select(_ => model.Cache!.Create()).ToArray();
        var next = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            var prompt = Prompt(model.Config, context, b);
            for (int at = 0; at < context; at += chunk)
                using (var o = model.Forward([new SequenceChunk(seqs[b], prompt[at..Math.Min(context, at + chunk)])]))
                    if (at + chunk >= context) next[b] = Sampler.Argmax(o.Logits[0].data<float>().ToArray());
        }
        return (seqs, next);
    }

    /// <summary>Times <paramref name="steps"/> greedy decode steps (after one warm-up step) of the given sequences together.</summary>
    public static DecodeResult TimeDecode(DeepseekV2Model model, LatentSequence[] seqs, int[] next, int steps, AttentionMode mode = AttentionMode.Auto)
    {
        int batch = seqs.Length, context = seqs[0].Length;
        var profile = new StepProfile();
        var sw = new Stopwatch();
        var sampling = TimeSpan.Zero;
        for (int s = 0; s < steps + 1; s++)
        {
            if (s == 1) { sw.Restart(); profile.Clear(); sampling = TimeSpan.Zero; } // step 0 warms up
            using var o = model.Forward(seqs.Select((q, b) => new SequenceChunk(q, [next[b]])).ToList(), mode, profile: profile);
            var sample = Stopwatch.StartNew();
            var logits = o.Logits.contiguous().data<float>().ToArray();
            int v = (int)o.Logits.shape[1];
            for (int b = 0; b < batch; b++) next[b] = Sampler.Sample(logits.AsSpan(b * v, v), SamplingParams.Greedy, default).Token;
            sampling += sample.Elapsed;
        }
        sw.Stop();
        var split = profile.Time.ToDictionary(kv => kv.Key, kv => kv.Value.TotalMilliseconds / steps);
        split["sampling"] = sampling.TotalMilliseconds / steps;
        return new DecodeResult(batch, context, steps, sw.Elapsed.TotalSeconds, batch * steps / sw.Elapsed.TotalSeconds, split);
    }
}
