using Grid.Gateway.Api;
using Grid.ModelCore.Tokenization;
using Xunit;

namespace Grid.Tests;

/// <summary>Incremental detokenization with stop strings against the whole-text answer it must equal.</summary>
public class TextAccumulatorTests
{
    static (string Text, bool Stopped) Run(GridTokenizer tok, int[] ids, string[] stops)
    {
        var acc = new TextAccumulator(tok, stops);
        var streamed = new System.Text.StringBuilder();
        foreach (var id in ids)
        {
            streamed.Append(acc.Add(id));
            Assert.Equal(streamed.ToString(), acc.Text);
            if (acc.Stopped) break;
        }
        streamed.Append(acc.Flush());
        Assert.Equal(streamed.ToString(), acc.Text);
        return (acc.Text, acc.Stopped);
    }

    [Fact]
    public void StreamedTextEqualsTheWholeTextCutAtTheFirstStop()
    {
        using var tok = GridTokenizer.Load(Golden.Dir("lite_f32"));
        var random = new Random(7);
        var texts = new[] { "The quick brown fox jumps over the lazy dog. 你好，世界 😀 café", "aaaaabaaaabaaab abab ababab", "numbers 12345 and 3.14\n\nthen text" };
        foreach (var source in texts)
        {
            var ids = tok.Encode(source, addSpecialTokens: false, parseSpecialTokens: false);
            var full = tok.Decode(ids);
            Assert.Equal((full, false), Run(tok, ids, []));
            for (int trial = 0; trial < 200; trial++)
            {
                // One to three stops: substrings of the text (so they occur) or strings that never do.
                var stops = Enumerable.Range(0, random.Next(1, 4)).Select(_ =>
                {
                    if (random.Next(4) == 0) return "never-there" + random.Next(10);
                    int at = random.Next(full.Length), len = random.Next(1, Math.Min(8, full.Length - at) + 1);
                    var s = full.Substring(at, len);
                    return char.IsHighSurrogate(s[^1]) || char.IsLowSurrogate(s[0]) ? "zz" : s;
                }).ToArray();
                var (text, stopped) = Run(tok, ids, stops);
                var first = stops.Select(s => (At: full.IndexOf(s, StringComparison.Ordinal), End: full.IndexOf(s, StringComparison.Ordinal) + s.Length))
                    .Where(m => m.At >= 0).OrderBy(m => m.End).ToArray();
                if (first.Length == 0)
                {
                    Assert.Equal((full, false), (text, stopped));
                    continue;
                }
                Assert.True(stopped);
                // The text is cut at the start of a stop that occurs, no later than the first stop to complete.
                Assert.StartsWith(text, full, StringComparison.Ordinal);
                Assert.True(text.Length <= first[0].At, $"'{text}' runs past stop '{string.Join("|", stops)}'");
                Assert.Contains(stops, s => full.IndexOf(s, text.Length, StringComparison.Ordinal) == text.Length);
            }
        }
    }

    [Fact]
    public void AStopStringSplitAcrossTokensIsHeldBackThenCut()
    {
        using var tok = GridTokenizer.Load(Golden.Dir("lite_f32"));
        var ids = tok.Encode("Hello world, hello there", addSpecialTokens: false);
        var acc = new TextAccumulator(tok, ["lo th"]);
        var deltas = ids.Select(acc.Add).ToList();
        Assert.True(acc.Stopped);
        Assert.Equal("Hello world, hel", string.Concat(deltas));
        Assert.Equal("", acc.Flush());
    }
}
