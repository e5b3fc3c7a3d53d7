#pragma warning disable SCME0001 // JsonPatch (extra request fields) is marked experimental in System.ClientModel
using System.ClientModel;
using System.Net;
using System.Text.Json.Nodes;
using OpenAI;
using OpenAI.Chat;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>/v1/chat/completions through the official OpenAI .NET client, against the golden "chat" expectations.</summary>
public abstract class ChatGoldenTests(GridServerFixture server)
{
    protected const string Question = "What is the capital of France?";

    protected static ChatClient Client(GridServerFixture server, string? model = null) =>
        new OpenAIClient(new ApiKeyCredential("x"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1") })
            .GetChatClient(model ?? server.ModelName);

    static ChatCompletionOptions GreedyOptions(int maxTokens = 16)
    {
        var options = new ChatCompletionOptions
        {
            Temperature = 0,
            MaxOutputTokenCount = maxTokens,
            IncludeLogProbabilities = true,
            TopLogProbabilityCount = 5,
        };
        // vLLM's extensions, sent as extra JSON fields.
        options.Patch.Set("$.return_tokens_as_token_ids"u8, true);
        options.Patch.Set("$.ignore_eos"u8, true);
        return options;
    }

    static void AssertLogprobsMatch(Expected expected, IReadOnlyList<ChatTokenLogProbabilityDetails> logprobs)
    {
        Assert.Equal(expected.GeneratedIds, logprobs.Select(l => int.Parse(l.Token["token_id:".Length..])).ToArray());
        var top5 = expected.StepTop5;
        for (int step = 0; step < logprobs.Count; step++)
        {
            Assert.Equal(5, logprobs[step].TopLogProbabilities.Count);
            Assert.True(Math.Abs(logprobs[step].LogProbability - top5[step][0].Logprob) < 1e-3);
            for (int k = 0; k < 5; k++)
            {
                Assert.Equal($"token_id:{top5[step][k].Id}", logprobs[step].TopLogProbabilities[k].Token);
                Assert.True(Math.Abs(logprobs[step].TopLogProbabilities[k].LogProbability - top5[step][k].Logprob) < 1e-3, $"step {step} rank {k}");
            }
        }
    }

    [Fact]
    public async Task ChatMatchesGolden()
    {
        var checkpoint = server.Checkpoint;
        var expected = Golden.Load(checkpoint, "chat");
        ChatCompletion completion = await Client(server).CompleteChatAsync([new UserChatMessage(Question)], GreedyOptions());
        Assert.Equal(ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.Equal(server.Tokenizer.Decode(expected.GeneratedIds), completion.Content[0].Text);
        AssertLogprobsMatch(expected, completion.ContentTokenLogProbabilities);
        Assert.Equal(expected.PromptIds.Length, completion.Usage.InputTokenCount);
        Assert.Equal(16, completion.Usage.OutputTokenCount);
        Assert.Equal(checkpoint, completion.Model);
    }

    [Fact]
    public async Task StreamingChatMatchesGolden()
    {
        var checkpoint = server.Checkpoint;
        var expected = Golden.Load(checkpoint, "chat");
        var text = "";
        var logprobs = new List<ChatTokenLogProbabilityDetails>();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        await foreach (var update in Client(server).CompleteChatStreamingAsync([new UserChatMessage(Question)], GreedyOptions()))
        {
            foreach (var part in update.ContentUpdate) text += part.Text;
            logprobs.AddRange(update.ContentTokenLogProbabilities);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.Equal(server.Tokenizer.Decode(expected.GeneratedIds), text);
        AssertLogprobsMatch(expected, logprobs);
        Assert.Equal(ChatFinishReason.Length, finish);
        Assert.NotNull(usage);
        Assert.Equal(expected.PromptIds.Length, usage!.InputTokenCount);
        Assert.Equal(16, usage.OutputTokenCount);
    }

}

/// <summary>Chat against lite_f32, plus the non-golden checks.</summary>
[Collection(HttpCollection.Name)]
public sealed class LiteChatTests(LiteServer lite) : ChatGoldenTests(lite)
{
    [Fact]
    public async Task TemplatedPromptMatchesTheTokenizerAndOfflineOutputWithSystemAndHistory()
    {
        var messages = new List<Grid.ChatTemplates.ChatMessage>
        {
            new("system", "Be brief."), new("user", "Hi"), new("assistant", "Hello"), new("user", Question),
        };
        var prompt = lite.Tokenizer.EncodeChat(messages);
        var offline = await Offline.GenerateAsync("lite_f32", prompt, 10);
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10 };
        options.Patch.Set("$.ignore_eos"u8, true);
        ChatCompletion completion = await Client(lite).CompleteChatAsync(
            [new SystemChatMessage("Be brief."), new UserChatMessage("Hi"), new AssistantChatMessage("Hello"), new UserChatMessage(Question)], options);
        Assert.Equal(lite.Tokenizer.Decode(offline.Select(t => t.Token).ToArray()), completion.Content[0].Text);
        Assert.Equal(prompt.Length, completion.Usage.InputTokenCount);
        Assert.Null(completion.ContentTokenLogProbabilities.FirstOrDefault());
    }

    [Fact]
    public async Task ChatNChoicesAndSeedsAreReproducible()
    {
        var body = Json.Obj(("model", "lite_f32"), ("messages", new JsonArray(Json.Obj(("role", "user"), ("content", Question)))),
            ("n", 2), ("seed", 42), ("temperature", 1.0), ("max_tokens", 8), ("ignore_eos", true));
        var (s1, a) = await lite.PostJsonAsync("/v1/chat/completions", body);
        var (s2, b) = await lite.PostJsonAsync("/v1/chat/completions", body);
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.Equal("chat.completion", a!["object"]!.GetValue<string>());
        Assert.Equal(2, a["choices"]!.AsArray().Count);
        Assert.Equal(a["choices"]!.ToJsonString(), b!["choices"]!.ToJsonString());
        Assert.Equal(16, a["usage"]!["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task UnknownModelIsA404ThroughTheClient()
    {
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Client(lite, "gpt-4").CompleteChatAsync([new UserChatMessage("x")]));
        Assert.Equal(404, e.Status);
        Assert.Contains("model_not_found", e.GetRawResponse()!.Content.ToString());
    }

}

/// <summary>full_f32 has its own collection: one gateway per process at a time (see <see cref="HttpCollection"/>).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HttpFullCollection : ICollectionFixture<FullServer>
{
    public const string Name = "http-full";
}

[Collection(HttpFullCollection.Name)]
public sealed class FullChatTests(FullServer full) : ChatGoldenTests(full);
