using System.Text.Json.Nodes;
using Grid.ChatTemplates;
using Grid.ModelCore.Tokenization;
using Xunit;

namespace Grid.Tests;

public class TokenizerTests
{
    [Fact]
    public void MatchesTheReferenceTokenizerCases()
    {
        using var tok = GridTokenizer.Load(Golden.Dir("lite_f32"));
        var cases = JsonNode.Parse(File.ReadAllText(Path.Combine(Golden.Root, "tokenizer_cases.json")))!.AsArray();
        Assert.True(cases.Count >= 3);
        foreach (var c in cases)
        {
            if (c!["chat"] is JsonArray chat)
            {
                var messages = chat.Select(m => new ChatMessage(m!["role"]!.GetValue<string>(), m["content"]!.GetValue<string>())).ToList();
                var rendered = tok.ApplyChatTemplate(messages, addGenerationPrompt: true);
                Assert.Equal(c["rendered"]!.GetValue<string>(), rendered);
                Assert.Equal(c["ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray(), tok.EncodeChat(messages));
                continue;
            }
            var text = c!["text"]!.GetValue<string>();
            var ids = c["ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
            var withBos = c["ids_with_bos"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
            Assert.Equal(ids, tok.Encode(text, addSpecialTokens: false));
            Assert.Equal(withBos, tok.Encode(text));
            Assert.Equal(c["decoded"]!.GetValue<string>(), tok.Decode(ids, skipSpecialTokens: false));
            Assert.Equal(tok.BosToken + c["decoded"]!.GetValue<string>(), tok.Decode(withBos, skipSpecialTokens: false));
        }
    }

    [Theory]
    [InlineData("lite_f32")]
    [InlineData("full_f32")]
    public void TextAndChatPromptsTokenizeAsTheGoldenFiles(string checkpoint)
    {
        using var tok = GridTokenizer.Load(Golden.Dir(checkpoint));
        Assert.Equal(Golden.Load(checkpoint, "text").PromptIds, tok.Encode("The quick brown fox"));
        var chat = tok.EncodeChat([new ChatMessage("user", "What is the capital of France?")]);
        Assert.Equal(Golden.Load(checkpoint, "chat").PromptIds, chat);
        Assert.Equal(406, tok.BosId);
        Assert.Equal(407, tok.EosId);
        Assert.Equal("<｜end▁of▁sentence｜>", tok.TokenText(407));
    }

    [Fact]
    public void BuiltInByteTokenizerRoundTripsAnyText()
    {
        var dir = Grid.ModelCore.Weights.RandomCheckpoint.EnsureBuiltIn();
        using var tok = GridTokenizer.Load(dir);
        var text = "Grüße, 世界! tabs\tand\nnewlines";
        var ids = tok.Encode(text);
        Assert.Equal(ByteTokenizer.BosId, ids[0]);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(text) + 1, ids.Length);
        Assert.Equal(text, tok.Decode(ids));
        Assert.StartsWith(ByteTokenizer.Bos + "User: hi\n\nAssistant:", tok.ApplyChatTemplate([new ChatMessage("user", "hi")]));
    }

    [Theory]
    [InlineData("lite_f32")]
    [InlineData("full_f32")]
    public void ByteTableAndIncrementalDecodingMatchTheLibrary(string checkpoint)
    {
        using var tok = GridTokenizer.Load(Golden.Dir(checkpoint));
        Assert.True(tok.DecodesFromByteTable);
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(Golden.Dir(checkpoint), "config.json")))!["vocab_size"]!.GetValue<int>();
        for (int id = 0; id < vocab; id++)
            Assert.Equal(tok.DecodeWithLibrary([id]), tok.Decode([id]));
        var random = new Random(1234);
        var golden = Golden.Load(checkpoint, "text").GeneratedIds.ToArray();
        var sequences = new List<int[]> { golden };
        for (int n = 0; n < 300; n++)
            sequences.Add(Enumerable.Range(0, random.Next(1, 40)).Select(_ => random.Next(vocab)).ToArray());
        foreach (var ids in sequences)
        {
            var expected = tok.DecodeWithLibrary(ids);
            Assert.Equal(expected, tok.Decode(ids));
            var decoder = tok.NewDecoder();
            var text = new System.Text.StringBuilder();
            foreach (var id in ids)
                text.Append(decoder.Add(id));
            text.Append(decoder.Flush());
            Assert.Equal(expected, text.ToString());
        }
    }

    [Fact]
    public void SpecialTokenStringsInTextStayPlainWhenNotParsed()
    {
        using var tok = GridTokenizer.Load(Golden.Dir("lite_f32"));
        const string eos = "<｜end▁of▁sentence｜>";
        Assert.Equal([407], tok.Encode(eos, addSpecialTokens: false));                 // Hugging Face's default: parsed
        var plain = tok.Encode(eos, addSpecialTokens: false, parseSpecialTokens: false);
        Assert.True(plain.Length > 1);
        Assert.DoesNotContain(407, plain);
        Assert.Equal(eos, tok.Decode(plain));
        Assert.Equal([406, .. plain], tok.Encode(eos, parseSpecialTokens: false));       // BOS still added by the post-processor
        // Text without special-token strings tokenizes the same either way.
        Assert.Equal(tok.Encode("The quick brown fox"), tok.Encode("The quick brown fox", parseSpecialTokens: false));
    }

    [Fact]
    public void ChatContentCannotForgeTheTemplatesSpecialTokens()
    {
        using var tok = GridTokenizer.Load(Golden.Dir("lite_f32"));
        const string eos = "<｜end▁of▁sentence｜>", bos = "<｜begin▁of▁sentence｜>";
        // The template's EOS after an assistant turn stays a control token; the one in the content does not.
        var messages = new[] { new ChatMessage("user", "a" + bos + "b"), new ChatMessage("assistant", "c" + eos + "d"), new ChatMessage("user", eos) };
        var ids = tok.EncodeChat(messages);
        Assert.Equal(1, ids.Count(i => i == 406));
        Assert.Equal(1, ids.Count(i => i == 407));
        Assert.Equal(tok.ApplyChatTemplate(messages), tok.Decode(ids, skipSpecialTokens: false));
        // Piece by piece: the template's text and special tokens, the content as plain text.
        int[] Plain(string text) => tok.Encode(text, addSpecialTokens: false, parseSpecialTokens: false);
        int[] expected = [406, .. Plain("User: a" + bos + "b\n\nAssistant: c" + eos + "d"), 407, .. Plain("User: " + eos + "\n\nAssistant:")];
        Assert.Equal(expected, ids);
        // Without special-token strings in the content nothing changes.
        var hi = new[] { new ChatMessage("user", "hi") };
        Assert.Equal(tok.Encode(tok.ApplyChatTemplate(hi), addSpecialTokens: false), tok.EncodeChat(hi));
    }
}
