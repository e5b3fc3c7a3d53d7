using System.Net;
using System.Text.Json.Nodes;
using Grid.Tests.Http;
using Xunit;

namespace Grid.Tests.PrefixCaching;

using Json = Grid.Tests.Http.Json;

/// <summary>
/// Prefix caching over HTTP on the embedded grid (on by default, blocks of 16): OpenAI's
/// usage.prompt_tokens_details.cached_tokens on completions and chat, streamed or not, the vLLM-named metrics on a
/// live /metrics scrape, and the cache's block counts on /debug/cache.
/// </summary>
[Collection(HttpCollection.Name)]
public sealed class PrefixCacheHttpTests(LiteServer server)
{
    /// <summary>The long golden prompt shifted by <paramref name="salt"/>: 200 tokens no other test sends.</summary>
    static int[] System(int salt) => Golden.Load("lite_f32", "long").PromptIds.Select(t => (t + salt) % 1000 + 3).ToArray();

    static int CachedTokens(JsonNode? response) => response!["usage"]!["prompt_tokens_details"]!["cached_tokens"]!.GetValue<int>();

    [Fact]
    public async Task CompletionsReportTheCachedPromptTokensAndTheOutputIsUnchanged()
    {
        long hitsBefore = (long)await server.MetricAsync("grid_prefix_cache_hits_total", mayBeAbsent: true);
        long queriesBefore = (long)await server.MetricAsync("grid_prefix_cache_queries_total", mayBeAbsent: true);
        int[] prompt = [.. System(17), 5, 6, 7];   // 203 tokens: 12 full blocks can be reused
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(prompt)), ("max_tokens", 4), ("temperature", 0), ("ignore_eos", true),
            ("logprobs", 3), ("return_tokens_as_token_ids", true));
        var (status1, first) = await server.PostJsonAsync("/v1/completions", body);
        var (status2, second) = await server.PostJsonAsync("/v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, status1);
        Assert.Equal(HttpStatusCode.OK, status2);
        Assert.Equal(0, CachedTokens(first));
        Assert.Equal(192, CachedTokens(second));
        Assert.Equal(203, second!["usage"]!["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(first!["choices"]![0]!["text"]!.GetValue<string>(), second["choices"]![0]!["text"]!.GetValue<string>());
        var lp1 = first["choices"]![0]!["logprobs"]!["token_logprobs"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        var lp2 = second["choices"]![0]!["logprobs"]!["token_logprobs"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        Assert.All(lp1.Zip(lp2), p => Assert.True(Math.Abs(p.First - p.Second) < 1e-4));

        // Streamed with usage: the last chunk carries the cached tokens too.
        var streamed = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(prompt)), ("max_tokens", 4), ("temperature", 0), ("ignore_eos", true),
            ("stream", true), ("stream_options", Json.Obj(("include_usage", true))));
        var (chunks, done) = await server.StreamAsync("/v1/completions", streamed);
        Assert.True(done);
        Assert.Equal(192, CachedTokens(chunks.Last(c => c["usage"] is JsonObject)));

        // Counters (vLLM's prefix_cache_queries / prefix_cache_hits, in tokens) on a live scrape.
        var hits = await Poll.UntilAsync(() => server.MetricAsync("grid_prefix_cache_hits_total"), h => h >= hitsBefore + 2 * 192);
        Assert.True(hits >= hitsBefore + 2 * 192);
        Assert.True(await server.MetricAsync("grid_prefix_cache_queries_total") >= queriesBefore + 3 * 203);
        Assert.InRange(await server.MetricAsync("grid_prefix_cache_hit_ratio"), 0.0001, 1.0);
        var cache = await server.GetJsonAsync("/debug/cache");
        Assert.True(cache["prefix_cache"]!["hits"]!.GetValue<long>() >= 2 * 192);
        Assert.True(cache["prefix_cache"]!["cached_blocks"]!.GetValue<long>() + cache["blocks_in_use"]!.GetValue<long>() >= 12);
    }

    [Fact]
    public async Task ChatRequestsSharingASystemPromptReportItsCachedTokens()
    {
        // A long system prompt (text the tokenizer turns into well over two blocks), then two different user turns.
        string system = string.Join(' ', Enumerable.Range(0, 60).Select(i => $"rule{i * 7 % 13}"));
        JsonObject Body(string user, bool stream) => Json.Obj(("model", "lite_f32"), ("max_tokens", 3), ("temperature", 0), ("stream", stream),
            ("messages", new JsonArray(Json.Obj(("role", "system"), ("content", system)), Json.Obj(("role", "user"), ("content", user)))));
        var (status, first) = await server.PostJsonAsync("/v1/chat/completions", Body("first question", false));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(0, CachedTokens(first));
        int promptTokens = first!["usage"]!["prompt_tokens"]!.GetValue<int>();
        Assert.True(promptTokens > 64, $"the system prompt is {promptTokens} tokens");

        var (_, second) = await server.PostJsonAsync("/v1/chat/completions", Body("another question", false));
        int cached = CachedTokens(second);
        Assert.True(cached >= 48 && cached % 16 == 0 && cached < second!["usage"]!["prompt_tokens"]!.GetValue<int>(), $"cached {cached}");

        var streamed = Body("a third question", true);
        streamed["stream_options"] = Json.Obj(("include_usage", true));
        var (chunks, done) = await server.StreamAsync("/v1/chat/completions", streamed);
        Assert.True(done);
        Assert.True(CachedTokens(chunks.Last(c => c["usage"] is JsonObject)) >= cached);
    }
}
