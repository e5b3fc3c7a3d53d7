#pragma warning disable SCME0001 // JsonPatch (extra request fields) is marked experimental in System.ClientModel
using System.ClientModel;
using System.Net;
using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;
using OpenAI;
using OpenAI.Chat;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// The sampling parameters over HTTP (raw JSON and the official OpenAI .NET client) on the lite golden checkpoint:
/// each one moves the output exactly as its definition says on the golden logits or on the logprobs the server
/// returns; seeded requests with them reproduce, through the embedded grid and model-core alike.
/// </summary>
[Collection(HttpCollection.Name)]
public sealed class SamplingParameterTests(LiteServer server)
{
    static readonly Expected Long = Golden.Load("lite_f32", "long");
    static readonly Expected Text = Golden.Load("lite_f32", "text");

    async Task<JsonNode> CompleteAsync(JsonObject body)
    {
        var (status, json) = await server.PostJsonAsync("/v1/completions", body);
        Assert.True(status == HttpStatusCode.OK, $"{status}: {json?.ToJsonString()}");
        return json!;
    }

    static JsonObject Body(int[] prompt, int maxTokens, params (string Key, JsonNode? Value)[] fields)
    {
        var body = Json.Obj(("prompt", Json.Ids(prompt)), ("max_tokens", maxTokens), ("return_tokens_as_token_ids", true));
        foreach (var (k, v) in fields) body[k] = v?.DeepClone();
        return body;
    }

    static int[] Tokens(JsonNode choice) => choice["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId).ToArray();

    static int Argmax(IReadOnlyList<double> values) => Enumerable.Range(0, values.Count).MaxBy(i => values[i]);

    [Fact]
    public async Task RepetitionPenaltyPicksTheArgmaxOfTheGoldenLogitsPenalisedAsDefined()
    {
        // The golden "long" prompt: its most likely next token (193) is in the prompt, so the penalty can move it.
        var logits = Long.LastLogits;
        var seen = Long.PromptIds.ToHashSet();
        var predictions = new List<int>();
        foreach (var r in new[] { 1.0, 1.2, 1.3, 2.0 })
        {
            var penalised = logits.Select((l, i) => seen.Contains(i) ? (l > 0 ? l / r : l * r) : l).ToArray();
            int expected = Argmax(penalised);
            predictions.Add(expected);
            var json = await CompleteAsync(Body(Long.PromptIds, 1, ("temperature", 0), ("logprobs", 1), ("repetition_penalty", r)));
            Assert.Equal(expected, Tokens(json["choices"]![0]!).Single());
        }
        Assert.Equal([193, 193, 455, 455], predictions);   // the definition flips it between 1.2 and 1.3 (the test can fail)
    }

    [Fact]
    public async Task LogitBiasMovesTheFirstTokenByExactlyItsAmount()
    {
        var logits = Text.LastLogits;
        int first = Argmax(logits);
        int second = Argmax(logits.Select((l, i) => i == first ? double.NegativeInfinity : l).ToArray());
        double margin = logits[first] - logits[second];
        async Task<int> FirstTokenAsync(JsonObject bias) =>
            Tokens((await CompleteAsync(Body(Text.PromptIds, 1, ("temperature", 0), ("logprobs", 1), ("logit_bias", bias))))["choices"]![0]!).Single();
        Assert.Equal(first, await FirstTokenAsync(new JsonObject { [second.ToString()] = margin - 0.01 }));
        Assert.Equal(second, await FirstTokenAsync(new JsonObject { [second.ToString()] = margin + 0.01 }));
        Assert.Equal(second, await FirstTokenAsync(new JsonObject { [first.ToString()] = -100 }));
        // Biases are clamped to [-100, 100] (as vLLM): -1e6 bans no more than -100 does.
        Assert.Equal(second, await FirstTokenAsync(new JsonObject { [first.ToString()] = -1e6 }));
        Assert.Equal(7, await FirstTokenAsync(new JsonObject { ["7"] = 100 }));
    }

    [Fact]
    public async Task FrequencyAndPresencePenaltiesPickTheArgmaxOfTheReturnedLogprobsLessThePenalties()
    {
        // Negative values encourage repetition (OpenAI allows [-2, 2]); the greedy output of this random-weight model
        // has no repeats, so positive ones would have nothing to act on.
        const double frequency = -0.4, presence = -1.0;
        var json = await CompleteAsync(Body(Text.PromptIds, 16, ("temperature", 0), ("logprobs", 20), ("ignore_eos", true),
            ("frequency_penalty", frequency), ("presence_penalty", presence)));
        var choice = json["choices"]![0]!;
        var tokens = Tokens(choice);
        var tops = choice["logprobs"]!["top_logprobs"]!.AsArray();
        Assert.Equal(16, tokens.Length);
        var counts = new Dictionary<int, int>();
        for (int k = 0; k < tokens.Length; k++)
        {
            // Penalties subtract from logits; logprobs are the raw logits less one constant per row, so the argmax of
            // (logprob - f * count - p * [count > 0]) over the top 20 is the sampler's choice.
            var top = tops[k]!.AsObject().Select(kv => (Id: int.Parse(kv.Key["token_id:".Length..]), Logprob: kv.Value!.GetValue<double>())).ToList();
            var penalised = top.Select(t => (t.Id, Value: t.Logprob - frequency * counts.GetValueOrDefault(t.Id) - (counts.ContainsKey(t.Id) ? presence : 0))).ToList();
            var best = penalised.MaxBy(t => t.Value);
            // Tokens outside the top 20 have logprobs below its last one: the choice is decided within it when the best
            // penalised value beats that bound for every token (seen ones outside get their penalty added to it).
            double floor = top.Min(t => t.Logprob);
            double bound = counts.Where(c => top.All(t => t.Id != c.Key)).Select(c => floor - frequency * c.Value - presence).DefaultIfEmpty(floor).Max();
            Assert.True(best.Value >= Math.Max(floor, bound), $"step {k}: the penalised choice lies within the top 20");
            Assert.Equal(best.Id, tokens[k]);
            counts[tokens[k]] = counts.GetValueOrDefault(tokens[k]) + 1;
        }
        // Without penalties greedy does not repeat itself here; with them it does.
        var plain = Tokens((await CompleteAsync(Body(Text.PromptIds, 16, ("temperature", 0), ("logprobs", 1), ("ignore_eos", true))))["choices"]![0]!);
        Assert.NotEqual(plain, tokens);
        Assert.True(plain.GroupBy(t => t).Max(g => g.Count()) < tokens.GroupBy(t => t).Max(g => g.Count()),
            $"plain {string.Join(",", plain)} vs penalised {string.Join(",", tokens)}");
    }

    [Fact]
    public async Task OpenAiClientSendsPenaltiesAndLogitBiasAndGetsWhatRawHttpGets()
    {
        var client = new OpenAIClient(new ApiKeyCredential("x"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1") })
            .GetChatClient(server.ModelName);
        var options = new ChatCompletionOptions
        {
            Temperature = 0,
            MaxOutputTokenCount = 12,
            FrequencyPenalty = 1.2f,
            PresencePenalty = 0.6f,
            IncludeLogProbabilities = true,
            TopLogProbabilityCount = 2,
        };
        options.LogitBiases[Text.GeneratedIds[0]] = -100;
        options.Patch.Set("$.return_tokens_as_token_ids"u8, true);
        options.Patch.Set("$.ignore_eos"u8, true);
        ChatCompletion completion = await client.CompleteChatAsync([new UserChatMessage("What is the capital of France?")], options);
        var viaClient = completion.ContentTokenLogProbabilities.Select(l => int.Parse(l.Token["token_id:".Length..])).ToArray();

        var raw = Json.Obj(("messages", new JsonArray(Json.Obj(("role", "user"), ("content", "What is the capital of France?")))),
            ("max_tokens", 12), ("temperature", 0), ("frequency_penalty", 1.2), ("presence_penalty", 0.6),
            ("logit_bias", new JsonObject { [Text.GeneratedIds[0].ToString()] = -100 }), ("logprobs", true), ("return_tokens_as_token_ids", true), ("ignore_eos", true));
        var (status, json) = await server.PostJsonAsync("/v1/chat/completions", raw);
        Assert.Equal(HttpStatusCode.OK, status);
        var viaHttp = json!["choices"]![0]!["logprobs"]!["content"]!.AsArray().Select(c => Json.TokenId(c!["token"])).ToArray();
        Assert.Equal(viaHttp, viaClient);
        Assert.Equal(12, viaClient.Length);
        Assert.DoesNotContain(Text.GeneratedIds[0], viaClient);
        // The same chat without the settings differs (they were sent and applied).
        var plain = await client.CompleteChatAsync([new UserChatMessage("What is the capital of France?")], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 });
        Assert.NotEqual(server.Tokenizer.Decode(viaClient), plain.Value.Content[0].Text);
    }

    [Fact]
    public async Task MinTokensMasksEosAndStopTokenIdsUntilEnoughAreGenerated()
    {
        const int eos = 407;
        // EOS pushed to the top: it ends the sequence at once...
        var eager = (await CompleteAsync(Body(Text.PromptIds, 12, ("temperature", 0), ("logprobs", 1), ("logit_bias", new JsonObject { [$"{eos}"] = 100 }))))["choices"]![0]!;
        Assert.Equal("stop", eager["finish_reason"]!.GetValue<string>());
        Assert.Equal([eos], Tokens(eager));
        // ...unless min_tokens holds it back: 5 other tokens, then EOS.
        var held = (await CompleteAsync(Body(Text.PromptIds, 12, ("temperature", 0), ("logprobs", 1), ("min_tokens", 5),
            ("logit_bias", new JsonObject { [$"{eos}"] = 100 }))))["choices"]![0]!;
        var heldTokens = Tokens(held);
        Assert.Equal("stop", held["finish_reason"]!.GetValue<string>());
        Assert.Equal(6, heldTokens.Length);
        Assert.DoesNotContain(eos, heldTokens[..5]);
        Assert.Equal(eos, heldTokens[5]);
        // The same for stop_token_ids (with ignore_eos), seeded at temperature 1.
        var stopId = Text.GeneratedIds[3];
        var sampled = (await CompleteAsync(Body(Text.PromptIds, 12, ("temperature", 1.0), ("seed", 4), ("logprobs", 1), ("ignore_eos", true), ("min_tokens", 3),
            ("stop_token_ids", Json.Ids([stopId])), ("logit_bias", new JsonObject { [$"{stopId}"] = 100 }))))["choices"]![0]!;
        var sampledTokens = Tokens(sampled);
        Assert.Equal(4, sampledTokens.Length);
        Assert.DoesNotContain(stopId, sampledTokens[..3]);
        Assert.Equal(stopId, sampledTokens[3]);
    }

    [Fact]
    public async Task MinTokensDefersStopStrings()
    {
        var plain = (await CompleteAsync(Body(Text.PromptIds, 4, ("temperature", 0), ("logprobs", 1), ("ignore_eos", true))))["choices"]![0]!;
        var text = plain["text"]!.GetValue<string>();
        var firstText = server.Tokenizer.TokenText(Tokens(plain)[0]);
        Assert.False(string.IsNullOrWhiteSpace(firstText));
        var stopped = (await CompleteAsync(Body(Text.PromptIds, 4, ("temperature", 0), ("ignore_eos", true), ("stop", firstText))))["choices"]![0]!;
        Assert.Equal("stop", stopped["finish_reason"]!.GetValue<string>());
        Assert.Equal("", stopped["text"]!.GetValue<string>());
        // With min_tokens 4 the stop string in the first token does not count: all 4 tokens are generated.
        var json = await CompleteAsync(Body(Text.PromptIds, 4, ("temperature", 0), ("ignore_eos", true), ("stop", firstText), ("min_tokens", 4)));
        Assert.Equal(4, json["usage"]!["completion_tokens"]!.GetValue<int>());
        Assert.StartsWith(firstText, json["choices"]![0]!["text"]!.GetValue<string>());
        Assert.StartsWith(json["choices"]![0]!["text"]!.GetValue<string>(), text);
    }

    [Fact]
    public async Task BestOfReturnsTheCandidatesWithTheHighestCumulativeLogprob()
    {
        var common = new (string, JsonNode?)[] { ("temperature", 1.3), ("seed", 11), ("logprobs", 0), ("ignore_eos", true) };
        var all = (await CompleteAsync(Body(Text.PromptIds, 8, [.. common, ("n", 4)])))["choices"]!.AsArray();
        var scores = all.Select(c => c!["logprobs"]!["token_logprobs"]!.AsArray().Sum(x => x!.GetValue<double>())).ToArray();
        var texts = all.Select(c => c!["text"]!.GetValue<string>()).ToArray();
        Assert.Equal(4, scores.Distinct().Count());   // four different candidates: the choice is not trivial
        var ranked = Enumerable.Range(0, 4).OrderByDescending(i => scores[i]).ToArray();

        var one = await CompleteAsync(Body(Text.PromptIds, 8, [.. common, ("n", 1), ("best_of", 4)]));
        Assert.Equal(texts[ranked[0]], one["choices"]!.AsArray().Single()!["text"]!.GetValue<string>());
        var two = await CompleteAsync(Body(Text.PromptIds, 8, [.. common, ("n", 2), ("best_of", 4)]));
        var choices = two["choices"]!.AsArray();
        Assert.Equal([texts[ranked[0]], texts[ranked[1]]], choices.Select(c => c!["text"]!.GetValue<string>()));
        Assert.Equal([0, 1], choices.Select(c => c!["index"]!.GetValue<int>()));
        Assert.Equal(16, two["usage"]!["completion_tokens"]!.GetValue<int>());   // the returned choices' tokens, as vLLM counts
    }

    [Fact]
    public async Task SeededRequestsWithEveryParameterReproduceAndMatchModelCore()
    {
        var sampling = new SamplingParams
        {
            Temperature = 0.9, TopP = 0.95, Seed = 21, PresencePenalty = 0.4, FrequencyPenalty = 0.7, RepetitionPenalty = 1.15, MinP = 0.05,
            LogitBias = [new TokenBias(Text.GeneratedIds[1], -3f)],
        };
        JsonObject Request(long seed) => Body(Text.PromptIds, 20, ("temperature", 0.9), ("top_p", 0.95), ("seed", seed), ("presence_penalty", 0.4),
            ("frequency_penalty", 0.7), ("repetition_penalty", 1.15), ("min_p", 0.05), ("logit_bias", new JsonObject { [$"{Text.GeneratedIds[1]}"] = -3 }),
            ("logprobs", 1), ("ignore_eos", true));
        var first = Tokens((await CompleteAsync(Request(21)))["choices"]![0]!);
        var again = Tokens((await CompleteAsync(Request(21)))["choices"]![0]!);
        var otherSeed = Tokens((await CompleteAsync(Request(22)))["choices"]![0]!);
        Assert.Equal(first, again);
        Assert.NotEqual(first, otherSeed);
        // model-core in process (no grid, no HTTP) draws the same tokens.
        var offline = await Offline.GenerateAsync("lite_f32", Text.PromptIds, 20, sampling, logprobs: 1);
        Assert.Equal(offline.Select(t => t.Token), first);
        // Without the penalties the same seed draws something else (they took part).
        var unpenalised = await Offline.GenerateAsync("lite_f32", Text.PromptIds, 20,
            sampling with { PresencePenalty = 0, FrequencyPenalty = 0, RepetitionPenalty = 1, LogitBias = [] }, logprobs: 1);
        Assert.NotEqual(unpenalised.Select(t => t.Token), first);
    }

    [Theory]
    [InlineData("{\"presence_penalty\": 2.5}", "presence_penalty")]
    [InlineData("{\"frequency_penalty\": -2.01}", "frequency_penalty")]
    [InlineData("{\"frequency_penalty\": \"high\"}", "frequency_penalty")]
    [InlineData("{\"repetition_penalty\": 0}", "repetition_penalty")]
    [InlineData("{\"repetition_penalty\": -1}", "repetition_penalty")]
    [InlineData("{\"min_p\": 1.5}", "min_p")]
    [InlineData("{\"min_p\": -0.1}", "min_p")]
    [InlineData("{\"min_tokens\": -1}", "min_tokens")]
    [InlineData("{\"min_tokens\": 9, \"max_tokens\": 8}", "min_tokens")]
    [InlineData("{\"min_tokens\": 17}", "min_tokens")]
    [InlineData("{\"logit_bias\": [1, 2]}", "logit_bias")]
    [InlineData("{\"logit_bias\": {\"abc\": 1}}", "logit_bias")]
    [InlineData("{\"logit_bias\": {\"-3\": 1}}", "logit_bias")]
    [InlineData("{\"logit_bias\": {\"512\": 1}}", "logit_bias")]
    [InlineData("{\"logit_bias\": {\"5\": \"up\"}}", "logit_bias.5")]
    [InlineData("{\"best_of\": 1, \"n\": 2}", "best_of")]
    [InlineData("{\"best_of\": 0}", "best_of")]
    [InlineData("{\"best_of\": 3, \"stream\": true}", "best_of")]
    [InlineData("{\"best_of\": 99}", "best_of")]
    public async Task OutOfRangeParametersGet400(string fields, string param)
    {
        var body = JsonNode.Parse(fields)!.AsObject();
        body["prompt"] = "Hello";
        var (status, json) = await server.PostJsonAsync("/v1/completions", body);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, json!["error"]!["param"]!.GetValue<string>());
        Assert.Equal("invalid_request_error", json["error"]!["type"]!.GetValue<string>());
    }

    [Fact]
    public async Task TooManyLogitBiasEntriesAndBestOfInChatGet400()
    {
        var bias = new JsonObject();
        for (int i = 0; i < 301; i++) bias[i.ToString()] = 1;
        var (status, json) = await server.PostJsonAsync("/v1/completions", Json.Obj(("prompt", "Hi"), ("logit_bias", bias.DeepClone())));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("logit_bias", json!["error"]!["param"]!.GetValue<string>());
        bias.Remove("300");
        (status, _) = await server.PostJsonAsync("/v1/completions", Json.Obj(("prompt", "Hi"), ("max_tokens", 1), ("logit_bias", bias.DeepClone())));
        Assert.Equal(HttpStatusCode.OK, status);
        (status, json) = await server.PostJsonAsync("/v1/chat/completions", Json.Obj(("messages", new JsonArray(Json.Obj(("role", "user"), ("content", "Hi")))), ("best_of", 2)));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("best_of", json!["error"]!["param"]!.GetValue<string>());
    }

    [Fact]
    public async Task TokenizeAndDetokenizeRoundTrip()
    {
        const string text = "The quick brown fox";
        var (status, json) = await server.PostJsonAsync("/tokenize", Json.Obj(("model", server.ModelName), ("prompt", text), ("return_token_strs", true)));
        Assert.Equal(HttpStatusCode.OK, status);
        var ids = json!["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray();
        Assert.Equal(Text.PromptIds, ids);   // the golden ids: BOS + the text, as /v1/completions tokenizes it
        Assert.Equal(ids.Length, json["count"]!.GetValue<int>());
        Assert.Equal(GridServerFixture.ContextLength, json["max_model_len"]!.GetValue<int>());
        var strs = json["token_strs"]!.AsArray().Select(s => s!.GetValue<string>()).ToArray();
        Assert.Equal(ids.Length, strs.Length);
        Assert.Equal("<｜begin▁of▁sentence｜>", strs[0]);

        (status, json) = await server.PostJsonAsync("/tokenize", Json.Obj(("prompt", text), ("add_special_tokens", false)));
        Assert.Equal(ids[1..], json!["tokens"]!.AsArray().Select(t => t!.GetValue<int>()));
        Assert.Null(json["token_strs"]);

        (status, json) = await server.PostJsonAsync("/detokenize", Json.Obj(("model", server.ModelName), ("tokens", Json.Ids(ids[1..]))));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(text, json!["prompt"]!.GetValue<string>());

        // Chat messages: the template's ids, exactly the prompt /v1/chat/completions runs (the golden "chat" prompt).
        var chat = Golden.Load("lite_f32", "chat");
        (status, json) = await server.PostJsonAsync("/tokenize", Json.Obj(("messages", new JsonArray(Json.Obj(("role", "user"), ("content", "What is the capital of France?"))))));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(chat.PromptIds, json!["tokens"]!.AsArray().Select(t => t!.GetValue<int>()));

        foreach (var (path, body, param) in new (string, JsonObject, string?)[]
        {
            ("/tokenize", Json.Obj(("prompt", 5)), "prompt"),
            ("/tokenize", Json.Obj(("model", "nope"), ("prompt", "x")), "model"),
            ("/tokenize", new JsonObject(), "prompt"),
            ("/detokenize", Json.Obj(("tokens", Json.Ids([1, 512]))), "tokens"),
            ("/detokenize", new JsonObject(), "tokens"),
        })
        {
            (status, json) = await server.PostJsonAsync(path, body);
            Assert.True(status is HttpStatusCode.BadRequest or HttpStatusCode.NotFound, $"{path} {body.ToJsonString()}: {status}");
            Assert.Equal(param, json!["error"]!["param"]!.GetValue<string>());
        }
    }
}
