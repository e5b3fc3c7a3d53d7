using System.Net;
using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// /v1/completions over real HTTP against the golden expectations and model-core's offline output. The OpenAI .NET
/// client (2.15.0) has no public legacy-completions client (LegacyCompletionClient is internal), so these tests
/// use HttpClient and JSON; chat goes through the official client (ChatTests).
/// </summary>
[Collection(HttpCollection.Name)]
public sealed class CompletionsTests(LiteServer lite)
{
    static JsonObject Body(int[] prompt, int maxTokens = 16, params (string, JsonNode?)[] extra)
    {
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(prompt)), ("max_tokens", maxTokens), ("temperature", 0));
        foreach (var (k, v) in extra) body[k] = v;
        return body;
    }

    public static IEnumerable<object[]> Prompts() => Golden.Prompts.Select(p => new object[] { p });

    [Theory]
    [MemberData(nameof(Prompts))]
    public async Task GreedyTokensAndLogprobsMatchGolden(string prompt)
    {
        var expected = Golden.Load("lite_f32", prompt);
        var (status, json) = await lite.PostJsonAsync("/v1/completions", Body(expected.PromptIds, 16,
            ("ignore_eos", true), ("logprobs", 5), ("return_tokens_as_token_ids", true)));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", json!["object"]!.GetValue<string>());
        Assert.Equal("lite_f32", json["model"]!.GetValue<string>());
        var choice = json["choices"]![0]!;
        Assert.Equal("length", choice["finish_reason"]!.GetValue<string>());
        expected.AssertLegacyLogprobs(choice["logprobs"]!);
        Assert.Equal(lite.Tokenizer.Decode(expected.GeneratedIds), choice["text"]!.GetValue<string>());
        Assert.Equal(expected.PromptIds.Length, json["usage"]!["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(16, json["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal(expected.PromptIds.Length + 16, json["usage"]!["total_tokens"]!.GetValue<int>());
    }

    [Theory]
    [MemberData(nameof(Prompts))]
    public async Task StreamingGivesTheSameTokensTextAndUsage(string prompt)
    {
        var expected = Golden.Load("lite_f32", prompt);
        var (chunks, done) = await lite.StreamAsync("/v1/completions", Body(expected.PromptIds, 16, ("ignore_eos", true), ("logprobs", 5),
            ("return_tokens_as_token_ids", true), ("stream", true), ("stream_options", Json.Obj(("include_usage", true)))));
        Assert.True(done);
        var ids = new List<int>();
        var text = "";
        string? finish = null;
        foreach (var c in chunks.SkipLast(1))
        {
            Assert.Equal("text_completion", c["object"]!.GetValue<string>());
            Assert.Null(c["usage"]);
            var choice = c["choices"]![0]!;
            text += choice["text"]!.GetValue<string>();
            if (choice["logprobs"] is JsonObject lp)
            {
                ids.AddRange(lp["tokens"]!.AsArray().Select(Json.TokenId));
                var top = lp["top_logprobs"]![0]!.AsObject();
                Assert.True(Math.Abs(top[$"token_id:{expected.StepTop5[ids.Count - 1][0].Id}"]!.GetValue<double>() - expected.StepTop5[ids.Count - 1][0].Logprob) < 1e-3);
            }
            finish = choice["finish_reason"]?.GetValue<string>() ?? finish;
        }
        Assert.Equal(expected.GeneratedIds, ids.ToArray());
        Assert.Equal(lite.Tokenizer.Decode(expected.GeneratedIds), text);
        Assert.Equal("length", finish);
        var usage = chunks[^1]["usage"]!;
        Assert.Empty(chunks[^1]["choices"]!.AsArray());
        Assert.Equal(expected.PromptIds.Length, usage["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(16, usage["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task TextPromptIsTokenizedWithBosAndMatchesOffline()
    {
        var expected = Golden.Load("lite_f32", "text");
        var (status, json) = await lite.PostJsonAsync("/v1/completions", Json.Obj(("model", "lite_f32"), ("prompt", "The quick brown fox"),
            ("max_tokens", 8), ("temperature", 0), ("ignore_eos", true), ("logprobs", 2)));
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = json!["choices"]![0]!;
        Assert.Equal(lite.Tokenizer.Decode(expected.GeneratedIds[..8]), choice["text"]!.GetValue<string>());
        var tokens = choice["logprobs"]!["tokens"]!.AsArray().Select(t => t!.GetValue<string>()).ToArray();
        Assert.Equal(expected.GeneratedIds[..8].Select(lite.Tokenizer.TokenText), tokens);
        Assert.Equal(expected.PromptIds.Length, json["usage"]!["prompt_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task MaxTokensDefaultsTo16()
    {
        var (status, json) = await lite.PostJsonAsync("/v1/completions", Json.Obj(("prompt", Json.Ids(Golden.Load("lite_f32", "ids").PromptIds)),
            ("temperature", 0), ("ignore_eos", true)));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(16, json!["usage"]!["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task StopStringCutsTheTextAndFinishesWithStop()
    {
        var prompt = Golden.Load("lite_f32", "ids").PromptIds;
        var offline = await Offline.GenerateAsync("lite_f32", prompt, 32);
        var full = lite.Tokenizer.Decode(offline.Select(t => t.Token).ToArray());
        int k = Enumerable.Range(4, full.Length - 6).First(i => !full.Substring(i, 2).Contains('\uFFFD') && full.IndexOf(full.Substring(i, 2), StringComparison.Ordinal) == i);
        var stop = full.Substring(k, 2);
        foreach (var stream in new[] { false, true })
        {
            var body = Body(prompt, 32, ("ignore_eos", true), ("stop", new JsonArray("never-appears", stop)));
            string text; string? finish;
            if (!stream)
            {
                var (status, json) = await lite.PostJsonAsync("/v1/completions", body);
                Assert.Equal(HttpStatusCode.OK, status);
                text = json!["choices"]![0]!["text"]!.GetValue<string>();
                finish = json["choices"]![0]!["finish_reason"]!.GetValue<string>();
                Assert.True(json["usage"]!["completion_tokens"]!.GetValue<int>() < 32);
            }
            else
            {
                body["stream"] = true;
                var (chunks, done) = await lite.StreamAsync("/v1/completions", body);
                Assert.True(done);
                text = string.Concat(chunks.Select(c => c["choices"]![0]!["text"]!.GetValue<string>()));
                finish = chunks[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>();
            }
            Assert.Equal(full[..k], text);
            Assert.Equal("stop", finish);
        }
    }

    [Fact]
    public async Task StopTokenIdsAndEosEndWithStop()
    {
        var prompt = Golden.Load("lite_f32", "ids").PromptIds;
        var offline = (await Offline.GenerateAsync("lite_f32", prompt, 16)).Select(t => t.Token).ToArray();
        var stopId = offline[5];
        int at = Array.IndexOf(offline, stopId);
        var (_, json) = await lite.PostJsonAsync("/v1/completions", Body(prompt, 16, ("ignore_eos", true), ("stop_token_ids", Json.Ids([stopId]))));
        Assert.Equal("stop", json!["choices"]![0]!["finish_reason"]!.GetValue<string>());
        Assert.Equal(at + 1, json["usage"]!["completion_tokens"]!.GetValue<int>());
        // EOS stops unless ignore_eos: a prompt ending right where the model would say EOS is not needed, the
        // stop set is what matters: EOS itself as a stop token id behaves the same as the default EOS.
        Assert.Equal(lite.Tokenizer.Decode(offline[..(at + 1)]), json["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleAndChoiceIDrawsFromSeedChoiceAndIndex()
    {
        var prompt = Golden.Load("lite_f32", "text").PromptIds;
        var body = Body(prompt, 12, ("temperature", 0.9), ("top_p", 0.95), ("top_k", 50), ("seed", 1234), ("n", 3), ("ignore_eos", true),
            ("logprobs", 0), ("return_tokens_as_token_ids", true));
        var (s1, a) = await lite.PostJsonAsync("/v1/completions", body);
        var (s2, b) = await lite.PostJsonAsync("/v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.Equal(3, a!["choices"]!.AsArray().Count);
        // Same seed, same tokens and text. Logprobs agree to float rounding: the two runs may batch their three
        // choices into steps differently (arrival timing), which changes matmul blocking at the 1e-6 level.
        for (int i = 0; i < 3; i++)
        {
            var ca = a["choices"]![i]!;
            var cb = b!["choices"]![i]!;
            Assert.Equal(ca["text"]!.GetValue<string>(), cb["text"]!.GetValue<string>());
            Assert.Equal(ca["logprobs"]!["tokens"]!.ToJsonString(), cb["logprobs"]!["tokens"]!.ToJsonString());
            var la = ca["logprobs"]!["token_logprobs"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
            var lb = cb["logprobs"]!["token_logprobs"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
            Assert.All(la.Zip(lb), p => Assert.True(Math.Abs(p.First - p.Second) < 1e-4, $"{p.First} vs {p.Second}"));
        }
        Assert.Equal(36, a["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.Equal(prompt.Length, a["usage"]!["prompt_tokens"]!.GetValue<int>());
        var distinct = new HashSet<string>();
        for (int i = 0; i < 3; i++)
        {
            var choice = a["choices"]!.AsArray().Single(c => c!["index"]!.GetValue<int>() == i)!;
            var ids = choice["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId).ToArray();
            var offline = await Offline.GenerateAsync("lite_f32", prompt, 12,
                new SamplingParams { Temperature = 0.9, TopP = 0.95, TopK = 50, Seed = 1234 }, 0, choice: i);
            Assert.Equal(offline.Select(t => t.Token), ids);
            distinct.Add(string.Join(",", ids));
        }
        Assert.True(distinct.Count > 1, "different choices should differ");
    }

    [Fact]
    public async Task EchoPutsThePromptAndItsLogprobsFirst()
    {
        var expected = Golden.Load("lite_f32", "ids");
        var prompt = expected.PromptIds;
        var (status, json) = await lite.PostJsonAsync("/v1/completions", Body(prompt, 4, ("echo", true), ("logprobs", 1), ("ignore_eos", true), ("return_tokens_as_token_ids", true)));
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = json!["choices"]![0]!;
        var generated = expected.GeneratedIds[..4];
        Assert.Equal(lite.Tokenizer.Decode(prompt) + lite.Tokenizer.Decode(generated), choice["text"]!.GetValue<string>());
        var lp = choice["logprobs"]!;
        Assert.Equal(prompt.Concat(generated), lp["tokens"]!.AsArray().Select(Json.TokenId));
        var tokenLogprobs = lp["token_logprobs"]!.AsArray();
        Assert.Null(tokenLogprobs[0]);
        for (int i = 1; i < prompt.Length; i++) Assert.True(tokenLogprobs[i]!.GetValue<double>() <= 0);
        // The last prompt position's distribution is the first generated step's.
        Assert.True(Math.Abs(tokenLogprobs[prompt.Length]!.GetValue<double>() - expected.StepTop5[0][0].Logprob) < 1e-3);
        Assert.Equal(4, json["usage"]!["completion_tokens"]!.GetValue<int>());

        var (plain, noLogprobs) = await lite.PostJsonAsync("/v1/completions", Body(prompt, 4, ("echo", true), ("ignore_eos", true)));
        Assert.Equal(HttpStatusCode.OK, plain);
        Assert.Equal(choice["text"]!.GetValue<string>(), noLogprobs!["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Fact]
    public async Task SeveralPromptsGiveOneChoiceEach()
    {
        var a = Golden.Load("lite_f32", "ids");
        var b = Golden.Load("lite_f32", "chat");
        var (status, json) = await lite.PostJsonAsync("/v1/completions", Json.Obj(("prompt", new JsonArray(Json.Ids(a.PromptIds), Json.Ids(b.PromptIds))),
            ("max_tokens", 16), ("temperature", 0), ("ignore_eos", true)));
        Assert.Equal(HttpStatusCode.OK, status);
        var choices = json!["choices"]!.AsArray();
        Assert.Equal(lite.Tokenizer.Decode(a.GeneratedIds), choices[0]!["text"]!.GetValue<string>());
        Assert.Equal(lite.Tokenizer.Decode(b.GeneratedIds), choices[1]!["text"]!.GetValue<string>());
        Assert.Equal(a.PromptIds.Length + b.PromptIds.Length, json["usage"]!["prompt_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task ModelsHealthAndReady()
    {
        var models = await lite.GetJsonAsync("/v1/models");
        Assert.Equal("list", models["object"]!.GetValue<string>());
        Assert.Equal("lite_f32", models["data"]![0]!["id"]!.GetValue<string>());
        Assert.Equal(GridServerFixture.ContextLength, models["data"]![0]!["max_model_len"]!.GetValue<int>());
        Assert.Equal("ok", (await lite.GetJsonAsync("/health"))["status"]!.GetValue<string>());
        Assert.Equal("ready", (await lite.GetJsonAsync("/ready"))["status"]!.GetValue<string>());
        var metrics = await lite.Http.GetStringAsync(lite.BaseUrl + "/metrics");
        foreach (var name in new[] { "grid_latent_cache_tokens", "grid_latent_cache_bytes", "grid_running_sequences", "grid_waiting_sequences" })
            Assert.Contains(name, metrics);
    }
}
