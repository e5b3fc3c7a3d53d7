using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// Every kind of bad request gets a 4xx OpenAI error JSON, and none of them disturbs a stream in flight. The
/// long-context server lets that stream ask for more tokens than it could make during the test, so it is surely
/// still running while the bad requests arrive, on any machine.
/// </summary>
[Collection(HttpLongContextCollection.Name)]
public sealed class ErrorCatalogueTests(LongContextServer lite)
{
    const string C = "/v1/completions", Chat = "/v1/chat/completions";
    const string P = "\"prompt\": [406, 10, 20]";
    const string M = "\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]";

    public static readonly (string Name, string Method, string Path, string Body, int Status, string? Param, string? Code)[] Catalogue =
    [
        ("malformed JSON", "POST", C, "{\"prompt\": [1, 2", 400, null, "invalid_json"),
        ("empty body", "POST", C, "", 400, null, "invalid_json"),
        ("body is an array", "POST", C, "[1, 2]", 400, null, "invalid_json"),
        ("body is a string", "POST", C, "\"hello\"", 400, null, "invalid_json"),
        ("duplicate field", "POST", C, "{" + P + ", " + P + "}", 400, null, "invalid_json"),
        ("model not a string", "POST", C, "{\"model\": 5, " + P + "}", 400, "model", "invalid_type"),
        ("unknown model", "POST", C, "{\"model\": \"gpt-4\", " + P + "}", 404, "model", "model_not_found"),
        ("missing prompt", "POST", C, "{\"max_tokens\": 4}", 400, "prompt", "missing_required_parameter"),
        ("prompt a number", "POST", C, "{\"prompt\": 5}", 400, "prompt", "invalid_type"),
        ("prompt empty list", "POST", C, "{\"prompt\": []}", 400, "prompt", "invalid_value"),
        ("prompt id not integer", "POST", C, "{\"prompt\": [406, \"x\"]}", 400, "prompt[1]", "invalid_type"),
        ("prompt id fractional", "POST", C, "{\"prompt\": [406, 1.5]}", 400, "prompt[1]", "invalid_type"),
        ("prompt id out of vocab", "POST", C, "{\"prompt\": [406, 99999]}", 400, "prompt", "out_of_range"),
        ("prompt id negative", "POST", C, "{\"prompt\": [406, -1]}", 400, "prompt", "out_of_range"),
        ("prompt list of mixed", "POST", C, "{\"prompt\": [\"a\", 5]}", 400, "prompt[1]", "invalid_type"),
        ("max_tokens a string", "POST", C, "{" + P + ", \"max_tokens\": \"ten\"}", 400, "max_tokens", "invalid_type"),
        ("max_tokens zero", "POST", C, "{" + P + ", \"max_tokens\": 0}", 400, "max_tokens", "out_of_range"),
        ("max_tokens negative", "POST", C, "{" + P + ", \"max_tokens\": -5}", 400, "max_tokens", "out_of_range"),
        ("max_tokens fractional", "POST", C, "{" + P + ", \"max_tokens\": 2.5}", 400, "max_tokens", "invalid_type"),
        ("max_tokens huge", "POST", C, "{" + P + ", \"max_tokens\": 1e30}", 400, "max_tokens", "out_of_range"),
        ("context length exceeded", "POST", C, "{" + P + ", \"max_tokens\": 200000}", 400, "max_tokens", "context_length_exceeded"),
        ("lone surrogate in the prompt", "POST", C, "{\"prompt\": \"abc\\ud800def\", \"max_tokens\": 2}", 400, "prompt", "invalid_json"),
        ("lone surrogate in a stop string", "POST", C, "{" + P + ", \"stop\": [\"x\", \"\\udc00\"]}", 400, "stop[1]", "invalid_json"),
        ("max_tokens at int.MaxValue (no overflow)", "POST", C, "{" + P + ", \"max_tokens\": 2147483647}", 400, "max_tokens", "context_length_exceeded"),
        ("temperature too high", "POST", C, "{" + P + ", \"temperature\": 3}", 400, "temperature", "out_of_range"),
        ("temperature negative", "POST", C, "{" + P + ", \"temperature\": -0.5}", 400, "temperature", "out_of_range"),
        ("temperature a string", "POST", C, "{" + P + ", \"temperature\": \"hot\"}", 400, "temperature", "invalid_type"),
        ("top_p zero", "POST", C, "{" + P + ", \"top_p\": 0}", 400, "top_p", "out_of_range"),
        ("top_p above one", "POST", C, "{" + P + ", \"top_p\": 1.5}", 400, "top_p", "out_of_range"),
        ("top_k below -1", "POST", C, "{" + P + ", \"top_k\": -2}", 400, "top_k", "out_of_range"),
        ("top_k a boolean", "POST", C, "{" + P + ", \"top_k\": true}", 400, "top_k", "invalid_type"),
        ("seed a string", "POST", C, "{" + P + ", \"seed\": \"abc\"}", 400, "seed", "invalid_type"),
        ("stop a number", "POST", C, "{" + P + ", \"stop\": 7}", 400, "stop", "invalid_type"),
        ("stop list with a number", "POST", C, "{" + P + ", \"stop\": [\"a\", 7]}", 400, "stop[1]", "invalid_type"),
        ("stop list too long", "POST", C, "{" + P + ", \"stop\": [" + string.Join(",", Enumerable.Range(0, 17).Select(i => $"\"s{i}\"")) + "]}", 400, "stop", "out_of_range"),
        ("stop string too long", "POST", C, "{" + P + ", \"stop\": [\"a\", \"" + new string('x', 1025) + "\"]}", 400, "stop", "out_of_range"),
        ("stop string (not a list) too long", "POST", C, "{" + P + ", \"stop\": \"" + new string('x', 1025) + "\"}", 400, "stop", "out_of_range"),
        ("16 long stop strings with n 16", "POST", C, "{" + P + ", \"n\": 16, \"stop\": [" + string.Join(",", Enumerable.Range(0, 16).Select(i => $"\"{new string((char)('a' + i), 2000)}\"")) + "]}", 400, "stop", "out_of_range"),
        ("JSON nested 10,000 levels deep", "POST", C, "{\"prompt\": " + new string('[', 10_000) + new string(']', 10_000) + "}", 400, null, "invalid_json"),
        ("chat: JSON nested 10,000 levels deep", "POST", Chat, "{\"messages\": [{\"role\": \"user\", \"content\": " + string.Concat(Enumerable.Repeat("{\"a\":", 10_000)) + "1" + new string('}', 10_000) + "}]}", 400, null, "invalid_json"),
        ("n zero", "POST", C, "{" + P + ", \"n\": 0}", 400, "n", "out_of_range"),
        ("n too large", "POST", C, "{" + P + ", \"n\": 1000}", 400, "n", "out_of_range"),
        ("logprobs above 20", "POST", C, "{" + P + ", \"logprobs\": 21}", 400, "logprobs", "out_of_range"),
        ("logprobs a boolean", "POST", C, "{" + P + ", \"logprobs\": true}", 400, "logprobs", "invalid_type"),
        ("echo a string", "POST", C, "{" + P + ", \"echo\": \"yes\"}", 400, "echo", "invalid_type"),
        ("stream a number", "POST", C, "{" + P + ", \"stream\": 1}", 400, "stream", "invalid_type"),
        ("stream_options without stream", "POST", C, "{" + P + ", \"stream_options\": {\"include_usage\": true}}", 400, "stream_options", "invalid_value"),
        ("stream_options not an object", "POST", C, "{" + P + ", \"stream\": true, \"stream_options\": true}", 400, "stream_options", "invalid_type"),
        ("include_usage a string", "POST", C, "{" + P + ", \"stream\": true, \"stream_options\": {\"include_usage\": \"y\"}}", 400, "include_usage", "invalid_type"),
        ("stop_token_ids out of vocab", "POST", C, "{" + P + ", \"stop_token_ids\": [100000]}", 400, "stop_token_ids", "out_of_range"),
        ("ignore_eos a string", "POST", C, "{" + P + ", \"ignore_eos\": \"no\"}", 400, "ignore_eos", "invalid_type"),
        ("return_tokens_as_token_ids a number", "POST", C, "{" + P + ", \"return_tokens_as_token_ids\": 1}", 400, "return_tokens_as_token_ids", "invalid_type"),
        ("presence_penalty out of range", "POST", C, "{" + P + ", \"presence_penalty\": 5}", 400, "presence_penalty", "out_of_range"),
        ("logit_bias token out of vocab", "POST", C, "{" + P + ", \"logit_bias\": {\"100000\": 10}}", 400, "logit_bias", "out_of_range"),
        ("logit_bias not an object", "POST", C, "{" + P + ", \"logit_bias\": [5]}", 400, "logit_bias", "invalid_type"),
        ("best_of below n", "POST", C, "{" + P + ", \"n\": 2, \"best_of\": 1}", 400, "best_of", "invalid_value"),
        ("best_of with stream", "POST", C, "{" + P + ", \"best_of\": 3, \"stream\": true}", 400, "best_of", "invalid_value"),
        ("repetition_penalty zero", "POST", C, "{" + P + ", \"repetition_penalty\": 0}", 400, "repetition_penalty", "out_of_range"),
        ("min_p above 1", "POST", C, "{" + P + ", \"min_p\": 1.5}", 400, "min_p", "out_of_range"),
        ("min_tokens above max_tokens", "POST", C, "{" + P + ", \"max_tokens\": 2, \"min_tokens\": 3}", 400, "min_tokens", "invalid_value"),
        ("chat: best_of above n", "POST", Chat, "{" + M + ", \"best_of\": 3}", 400, "best_of", "unsupported_parameter"),
        ("tokenize: prompt a number", "POST", "/tokenize", "{\"prompt\": 5}", 400, "prompt", "invalid_type"),
        ("detokenize: token out of vocab", "POST", "/detokenize", "{\"tokens\": [100000]}", 400, "tokens", "out_of_range"),
        ("chat: messages missing", "POST", Chat, "{\"max_tokens\": 4}", 400, "messages", "missing_required_parameter"),
        ("chat: messages empty", "POST", Chat, "{\"messages\": []}", 400, "messages", "empty_array"),
        ("chat: messages not a list", "POST", Chat, "{\"messages\": \"hi\"}", 400, "messages", "invalid_type"),
        ("chat: message not an object", "POST", Chat, "{\"messages\": [\"hi\"]}", 400, "messages[0]", "invalid_type"),
        ("chat: role missing", "POST", Chat, "{\"messages\": [{\"content\": \"hi\"}]}", 400, "messages[0].role", "missing_required_parameter"),
        ("chat: role unknown", "POST", Chat, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages[0].role", "invalid_value"),
        ("chat: content a number", "POST", Chat, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages[0].content", "invalid_type"),
        ("chat: user content missing", "POST", Chat, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content", "missing_required_parameter"),
        ("chat: image part", "POST", Chat, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 400, "messages[0].content[0].type", "unsupported_parameter"),
        ("chat: lone surrogate in content", "POST", Chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi \\ud800\"}]}", 400, "messages[0].content", "invalid_json"),
        ("chat: logprobs a number", "POST", Chat, "{" + M + ", \"logprobs\": 5}", 400, "logprobs", "invalid_type"),
        ("chat: top_logprobs without logprobs", "POST", Chat, "{" + M + ", \"top_logprobs\": 3}", 400, "top_logprobs", "invalid_value"),
        ("chat: top_logprobs above 20", "POST", Chat, "{" + M + ", \"logprobs\": true, \"top_logprobs\": 21}", 400, "top_logprobs", "out_of_range"),
        ("chat: max_completion_tokens zero", "POST", Chat, "{" + M + ", \"max_completion_tokens\": 0}", 400, "max_completion_tokens", "out_of_range"),
        ("chat: context length exceeded", "POST", Chat, "{" + M + ", \"max_tokens\": 200000}", 400, "max_tokens", "context_length_exceeded"),
        ("chat: tool without a function", "POST", Chat, "{" + M + ", \"tools\": [{\"type\": \"function\"}]}", 400, "tools[0].function", "missing_required_parameter"),
        ("chat: min_tokens with response_format", "POST", Chat, "{" + M + ", \"min_tokens\": 2, \"response_format\": {\"type\": \"json_object\"}}", 400, "min_tokens", "invalid_value"),
        ("min_tokens with response_format", "POST", C, "{" + P + ", \"min_tokens\": 2, \"response_format\": {\"type\": \"json_object\"}}", 400, "min_tokens", "invalid_value"),
        ("chat: unsupported schema keyword", "POST", Chat, "{" + M + ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"x\", \"schema\": {\"type\": \"string\", \"pattern\": \"a\"}}}}", 400, "response_format.json_schema.schema", "unsupported_schema_keyword"),
        ("chat: tool_choice names no offered tool", "POST", Chat, "{" + M + ", \"tool_choice\": \"required\"}", 400, "tool_choice", "invalid_value"),
        ("chat: unknown model", "POST", Chat, "{\"model\": \"nope\", " + M + "}", 404, "model", "model_not_found"),
        ("unknown route", "POST", "/v1/embeddings", "{}", 404, null, "unknown_url"),
        ("wrong method", "GET", C, "", 405, null, "method_not_allowed"),
        ("unknown model id", "GET", "/v1/models/gpt-4", "", 404, "model", "model_not_found"),
        ("body over the size limit", "POST", C, "{\"prompt\": \"" + new string('a', 80 * 1024) + "\"}", 413, null, "request_too_large"),
    ];

    [Fact]
    public async Task EveryMalformedRequestGetsAnOpenAiErrorWhileAStreamKeepsGoing()
    {
        Assert.True(Catalogue.Length >= 30);
        var prompt = Golden.Load("lite_f32", "ids").PromptIds;
        const int compared = 300;
        var expected = await Offline.GenerateAsync("lite_f32", prompt, compared, logprobs: 0);
        int contextLength = (await lite.GetJsonAsync("/v1/models"))["data"]![0]!["max_model_len"]!.GetValue<int>();
        int maxTokens = contextLength - prompt.Length;   // the whole context: it cannot end during the test
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(prompt)), ("max_tokens", maxTokens), ("temperature", 0),
            ("ignore_eos", true), ("stream", true), ("logprobs", 0), ("return_tokens_as_token_ids", true));
        using var response = await lite.Http.SendAsync(lite.Post(C, body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var first = await reader.ReadLineAsync();   // the stream is running
        Assert.StartsWith("data: ", first);

        foreach (var (name, method, path, text, status, param, code) in Catalogue)
        {
            using var request = new HttpRequestMessage(new HttpMethod(method), lite.BaseUrl + path);
            if (method == "POST") request.Content = new StringContent(text, Encoding.UTF8, "application/json");
            using var bad = await lite.Http.SendAsync(request);
            Assert.True((int)bad.StatusCode == status, $"{name}: status {(int)bad.StatusCode}, expected {status}");
            var json = JsonNode.Parse(await bad.Content.ReadAsStringAsync())!;
            var error = json["error"]!;
            Assert.False(string.IsNullOrEmpty(error["message"]!.GetValue<string>()), name);
            Assert.Equal("invalid_request_error", error["type"]!.GetValue<string>());
            Assert.True(param == error["param"]?.GetValue<string>(), $"{name}: param {error["param"]}, expected {param}");
            Assert.True(code == error["code"]?.GetValue<string>(), $"{name}: code {error["code"]}, expected {code}");
        }

        // The stream was in flight through all of them (it is still running now) ...
        Assert.Equal(1, (await lite.GetJsonAsync("/debug/cache"))["sequences"]!.GetValue<long>());
        // ... and its tokens are exactly the offline ones.
        var ids = new List<int>();
        foreach (var line in new[] { first! }.ToAsyncEnumerable(reader))
        {
            if (line.Length == 0) continue;
            Assert.NotEqual("data: [DONE]", line);
            var chunk = JsonNode.Parse(line["data: ".Length..])!["choices"]![0]!;
            Assert.Null(chunk["finish_reason"]?.GetValue<string>());
            if (chunk["logprobs"] is JsonObject lp) ids.AddRange(lp["tokens"]!.AsArray().Select(Json.TokenId));
            if (ids.Count >= compared) break;
        }
        Assert.Equal(expected.Select(t => t.Token), ids.Take(compared));

        // Leave the server as found: the client goes away, the sequence is cancelled and its cache freed.
        reader.Dispose();
        response.Dispose();
        var cache = await Poll.UntilAsync(() => lite.GetJsonAsync("/debug/cache"), c => c["sequences"]!.GetValue<long>() == 0);
        Assert.Equal(0, cache["sequences"]!.GetValue<long>());
    }
}

static class LineReading
{
    /// <summary>The lines already read, then the rest of the reader (synchronously; the stream is local).</summary>
    public static IEnumerable<string> ToAsyncEnumerable(this string[] already, StreamReader reader)
    {
        foreach (var l in already) yield return l;
        while (reader.ReadLine() is { } line) yield return line;
    }
}
