using System.Text;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Structured;
using Xunit;

namespace Grid.Tests.Structured;

/// <summary>
/// The fast mask (plain string tokens taken by length, strings walked with a cursor) against the reference walk of the
/// whole trie: the same allowed set in every state of many sampled documents, budgets tight and loose.
/// </summary>
public sealed class MaskFastPathTests
{
    /// <summary>
    /// 256 single bytes plus <paramref name="size"/> random tokens over an alphabet with everything that matters inside a
    /// string: quotes, backslashes and escape letters, hex digits, control bytes, whole and broken UTF-8, structure bytes.
    /// </summary>
    static TokenVocabulary Vocabulary(int size, ulong seed)
    {
        var random = new SplitMix64(seed);
        byte[][] pieces =
        [
            .. "abcdefxyzABCDEFuntr0123456789 _-.,:{}[]\"\\/"u8.ToArray().Select(b => new[] { b }),
            [(byte)'\n'], [0x01], [0x7F], "é"u8.ToArray(), "日"u8.ToArray(), "😀"u8.ToArray(),
            [0xC3], [0xE6, 0x97], [0xA9], [0x97, 0xA5], [0xED, 0xA0, 0x80], [0xF0, 0x9F], [0xC0],
            "\\u00e9"u8.ToArray(), "\\n"u8.ToArray(), "\":"u8.ToArray(), "\","u8.ToArray(), "true"u8.ToArray(), "null"u8.ToArray(),
        ];
        var tokens = new List<byte[]?>();
        for (int i = 0; i < 256; i++) tokens.Add([(byte)i]);
        for (int i = 0; i < size; i++)
        {
            int parts = 1 + (int)(random.NextDouble() * 6);
            var t = new List<byte>();
            for (int k = 0; k < parts; k++) t.AddRange(pieces[(int)(random.NextDouble() * pieces.Length)]);
            tokens.Add(t.ToArray());
        }
        // A long run of plain bytes (longer than any maxLength here) and a special token without bytes.
        tokens.Add(Enumerable.Repeat((byte)'a', 40).ToArray());
        tokens.Add(null);
        return new TokenVocabulary(tokens);
    }

    public static TheoryData<string, bool, int> Schemas => new()
    {
        { JsonSchemaGrammar.AnyObject, false, 50 },
        { JsonGrammarTests.PersonSchema, true, 140 },
        { JsonGrammarTests.PersonSchema, true, 60 },
        { """{"type":"object","properties":{"s":{"type":"string","minLength":5,"maxLength":9},"t":{"type":"array","items":{"type":"string","minLength":2},"maxItems":3}},"required":["s","t"]}""", true, 50 },
        { """{"type":"object","properties":{"s":{"type":"string"}},"required":["s"]}""", true, 400 },
        { """{"type":"string","maxLength":30}""", false, 40 },
    };

    [Theory]
    [MemberData(nameof(Schemas))]
    public void FastMaskEqualsTheReferenceWalk(string schema, bool strict, int maxTokens)
    {
        var grammar = JsonSchemaGrammar.Compile(schema, strict);
        var vocabulary = Vocabulary(3000, 17);
        int eos = vocabulary.Count;   // one past the table
        int states = 0, inString = 0;
        for (int seed = 1; seed <= 12; seed++)
        {
            var decoder = new ConstrainedDecoder(grammar, vocabulary, maxTokens, [eos]);
            var random = new SplitMix64((ulong)seed * 7919);
            var text = new List<byte>();
            for (int i = 0; i < maxTokens; i++)
            {
                var logits = new float[vocabulary.Count + 1];
                // Favour the tokens that are hard for the fast path (quotes, backslashes, non-ASCII) now and then.
                bool tricky = random.NextDouble() < 0.3;
                for (int t = 0; t < logits.Length; t++)
                    logits[t] = (float)(random.NextGaussian() * 3) + (tricky && vocabulary.Bytes(t) is { } b && b.Any(x => x is (byte)'"' or (byte)'\\' or >= 0x80) ? 6 : 0);
                var fast = (float[])logits.Clone();
                var reference = (float[])logits.Clone();
                int n = decoder.Mask(fast);
                int m = decoder.MaskReference(reference);
                Assert.Equal(m, n);
                for (int t = 0; t < logits.Length; t++)
                    if (float.IsNegativeInfinity(fast[t]) != float.IsNegativeInfinity(reference[t]))
                        Assert.Fail($"seed {seed} step {i} after '{Encoding.UTF8.GetString(text.ToArray())}': token {t} " +
                            $"({Show(vocabulary.Bytes(t))}) fast {(float.IsNegativeInfinity(fast[t]) ? "masked" : "allowed")}, reference the other");
                states++;
                if (InsideString(text)) inString++;
                var token = Sampler.Sample(fast, new SamplingParams { Temperature = 1 }, new DrawKey(seed, 0, i)).Token;
                if (token == eos) break;
                text.AddRange(vocabulary.Bytes(token)!);
                decoder.Feed(token);
                Assert.False(decoder.Broken);
            }
        }
        Assert.True(states >= 100, $"{states} states compared");
        Assert.True(inString >= 20, $"only {inString} of {states} states were inside a string");
    }

    /// <summary>Whether the text so far stops inside a string (an odd number of unescaped quotes).</summary>
    static bool InsideString(List<byte> text)
    {
        bool inside = false, escaped = false;
        foreach (var b in text)
        {
            if (escaped) { escaped = false; continue; }
            if (inside && b == '\\') escaped = true;
            else if (b == '"') inside = !inside;
        }
        return inside;
    }

    static string Show(byte[]? bytes) => bytes is null ? "special" : string.Join(" ", bytes.Select(b => b.ToString("X2")));
}
