using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Structured;

namespace Grid.Benchmarks;

/// <summary>
/// Structured output: the time to compute one token's mask (walking the vocabulary's byte trie with the JSON grammar
/// state, budget check included) while documents of a schema are generated from random logits, for the benchmark
/// model's own vocabulary and synthetic byte-level vocabularies of DeepSeek-like sizes.
/// </summary>
public static class StructuredBench
{
    const string Schema = """
        {"type":"object","properties":{"name":{"type":"string","maxLength":24},"age":{"type":"integer"},"score":{"type":"number"},
         "tags":{"type":"array","items":{"enum":["a","bb","ccc"]},"maxItems":4},"address":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":["string","null"]}},"required":["city","zip"]}},
         "required":["name","age","score","tags","address"]}
        """;

    /// <summary>
    /// A byte-level vocabulary: the 256 bytes plus <paramref name="size"/> - 257 multi-byte tokens and EOS last. Random
    /// printable ASCII tokens of 2-12 bytes (about 1 in 10 holds a quote: harder than a real BPE vocabulary, where
    /// quotes sit in a few short tokens); with <paramref name="utf8Share"/> &gt; 0 that share of the tokens is instead 1-4
    /// non-ASCII characters (2- and 3-byte UTF-8, a leading space now and then, a tenth cut mid-character), as the CJK
    /// and accented pieces of a DeepSeek-size vocabulary are.
    /// </summary>
    static TokenVocabulary Synthetic(int size, int seed, double utf8Share = 0)
    {
        var random = new SplitMix64((ulong)seed);
        var tokens = new byte[]?[size];
        for (int i = 0; i < 256; i++) tokens[i] = [(byte)i];
        const string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:\"{}[]";
        for (int i = 256; i < size - 1; i++)
        {
            if (random.NextDouble() < utf8Share)
            {
                var text = new System.Text.StringBuilder(random.NextDouble() < 0.3 ? " " : "");
                int chars = 1 + (int)(random.NextDouble() * 4);
                for (int k = 0; k < chars; k++)
                    text.Append(random.NextDouble() < 0.7 ? (char)(0x4E00 + (int)(random.NextDouble() * 0x5000)) : (char)(0xC0 + (int)(random.NextDouble() * 0x180)));
                var bytes = System.Text.Encoding.UTF8.GetBytes(text.ToString());
                tokens[i] = random.NextDouble() < 0.1 && bytes.Length > 1 ? bytes[..^1] : bytes;
                continue;
            }
            int length = 2 + (int)(random.NextDouble() * 11);
            var t = new byte[length];
            for (int k = 0; k < length; k++) t[k] = (byte)alphabet[(int)(random.NextDouble() * alphabet.Length)];
            tokens[i] = t;
        }
        return new TokenVocabulary(tokens);
    }

    public static Section Run(BenchContext c)
    {
        var s = new Section("structured", "Structured output: JSON-schema mask time per token");
        var grammar = JsonSchemaGrammar.Compile(Schema, strict: true);
        var vocabularies = new List<(string Name, TokenVocabulary Vocabulary)>();
        if (TokenVocabulary.ForDirectory(c.ModelDir) is { } own) vocabularies.Add(($"benchmark model ({own.Count} tokens)", own));
        foreach (var size in c.Quick ? new[] { 32_000 } : new[] { 32_000, 102_400 })
            vocabularies.Add(($"synthetic byte-level BPE ({size} tokens)", Synthetic(size, size)));
        vocabularies.Add(("synthetic BPE-like, 30% UTF-8 tokens (102400 tokens)", Synthetic(102_400, 7, utf8Share: 0.3)));
        int documents = c.Quick ? 4 : 12;
        var rows = new List<string[]>();
        var data = new JsonArray();
        foreach (var (name, vocabulary) in vocabularies)
        {
            int eos = vocabulary.Count;   // one past the table: a special token with no bytes
            var times = new List<double>();
            var referenceTimes = new List<double>();
            int tokens = 0, ended = 0;
            for (int d = 0; d < documents; d++)
            {
                var decoder = new ConstrainedDecoder(grammar, vocabulary, 256, [eos]);
                var random = new SplitMix64((ulong)(d + 1));
                for (int i = 0; i < 256; i++)
                {
                    var logits = new float[vocabulary.Count + 1];
                    for (int t = 0; t < logits.Length; t++) logits[t] = (float)(random.NextGaussian() * 3);
                    // The reference walk (the mask before the fast path) on every other token, on a copy.
                    if (i % 2 == 0)
                    {
                        var copy = (float[])logits.Clone();
                        var rw = Stopwatch.StartNew();
                        decoder.MaskReference(copy);
                        referenceTimes.Add(rw.Elapsed.TotalMilliseconds);
                    }
                    var sw = Stopwatch.StartNew();
                    decoder.Mask(logits);
                    times.Add(sw.Elapsed.TotalMilliseconds);
                    var token = Sampler.Sample(logits, new SamplingParams { Temperature = 1 }, new DrawKey(d, 0, i)).Token;
                    tokens++;
                    if (token == eos) { ended++; break; }
                    decoder.Feed(token);
                }
            }
            times.Sort();
            double P(double q) => times[Math.Min(times.Count - 1, (int)(q * times.Count))];
            double mean = times.Average(), referenceMean = referenceTimes.Average();
            c.Log($"structured: {name}: {tokens} tokens, mask mean {mean:F3} ms, p50 {P(0.5):F3}, p90 {P(0.9):F3}, max {times[^1]:F3}; reference walk mean {referenceMean:F3} ms");
            rows.Add([name, tokens.ToString(), $"{ended}/{documents}", $"{mean:F3}", $"{P(0.5):F3}", $"{P(0.9):F3}", $"{times[^1]:F3}", $"{referenceMean:F3}"]);
            data.Add(new JsonObject
            {
                ["vocabulary"] = name, ["size"] = vocabulary.Count, ["tokens"] = tokens, ["documents"] = documents, ["ended"] = ended,
                ["mask_ms_mean"] = mean, ["mask_ms_p50"] = P(0.5), ["mask_ms_p90"] = P(0.9), ["mask_ms_max"] = times[^1],
                ["reference_walk_ms_mean"] = referenceMean,
            });
            s.Summary.Add(($"structured mask per token, {name}", $"{mean:F3} ms mean, {P(0.9):F3} ms p90 (reference walk {referenceMean:F3} ms)", "inside a string: the tokens that are not plain string bytes (their trie is walked)"));
        }
        s.Data["rows"] = data;
        s.Table(["vocabulary", "tokens", "documents ended", "mean ms", "p50 ms", "p90 ms", "max ms", "reference walk mean ms"], rows);
        s.Notes.Add("One mask: inside a string at rest, the plain-byte tokens (printable ASCII but quote and backslash) are taken by length with one budget check per length, and only the other tokens' trie is walked; strings are walked with a value cursor, other states with one immutable grammar state per accepted byte. Measured on the sampling thread, one sequence at a time.");
        s.Notes.Add("Reference walk: the whole trie with a grammar state per byte (the mask before the fast path, the same allowed set), timed on every other token of the same documents.");
        return s;
    }
}
