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
}
