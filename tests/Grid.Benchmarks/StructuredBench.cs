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

    /// <summary>A byte-level vocabulary: the 256 bytes plus <paramref name="size"/> - 257 multi-byte tokens (2-12 printable ASCII bytes) and EOS last.</summary>
    static TokenVocabulary Synthetic(int size, int seed)
    {
        var random = new SplitMix64((ulong)seed);
        var tokens = new byte[]?[size];
        for (int i = 0; i < 256; i++) tokens[i] = [(byte)i];
        const string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:\"{}[]";
        for (int i = 256; i < size - 1; i++)
        {
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
        int documents = c.Quick ? 4 : 12;
        var rows = new List<string[]>();
        var data = new JsonArray();
        foreach (var (name, vocabulary) in vocabularies)
        {
            int eos = vocabulary.Count;   // one past the table: a special token with no bytes
            var times = new List<double>();
            int tokens = 0, ended = 0;
            var buildWatch = Stopwatch.StartNew();
            for (int d = 0; d < documents; d++)
            {
                var decoder = new ConstrainedDecoder(grammar, vocabulary, 256, [eos]);
                var random = new SplitMix64((ulong)(d + 1));
                for (int i = 0; i < 256; i++)
                {
                    var logits = new float[vocabulary.Count + 1];
                    for (int t = 0; t < logits.Length; t++) logits[t] = (float)(random.NextGaussian() * 3);
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
            double mean = times.Average();
            c.Log($"structured: {name}: {tokens} tokens, mask mean {mean:F3} ms, p50 {P(0.5):F3}, p90 {P(0.9):F3}, max {times[^1]:F3}");
            rows.Add([name, tokens.ToString(), $"{ended}/{documents}", $"{mean:F3}", $"{P(0.5):F3}", $"{P(0.9):F3}", $"{times[^1]:F3}"]);
            data.Add(new JsonObject
            {
                ["vocabulary"] = name, ["size"] = vocabulary.Count, ["tokens"] = tokens, ["documents"] = documents, ["ended"] = ended,
                ["mask_ms_mean"] = mean, ["mask_ms_p50"] = P(0.5), ["mask_ms_p90"] = P(0.9), ["mask_ms_max"] = times[^1],
            });
            s.Summary.Add(($"structured mask per token, {name}", $"{mean:F3} ms mean, {P(0.9):F3} ms p90", "trie nodes the grammar state lets through (inside a string nearly all)"));
        }
        s.Data["rows"] = data;
        s.Table(["vocabulary", "tokens", "documents ended", "mean ms", "p50 ms", "p90 ms", "max ms"], rows);
        s.Notes.Add("One mask = walking the token trie with the grammar state (one immutable state per accepted byte), plus the budget check per candidate token; measured on the sampling thread, one sequence at a time.");
        return s;
    }
}
