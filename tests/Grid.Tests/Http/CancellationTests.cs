using System.Net;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// lite_f32 with its whole context (max_position_embeddings, 163840 tokens) instead of the 512 of the shared server:
/// a generation that asks for all of it cannot end while a test runs, on any machine. Tests that need a stream
/// still in flight use it.
/// </summary>
public sealed class LongContextServer : GridServerFixture
{
    public override string Checkpoint => "lite_f32";
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Grid:Model:MaxModelLen"] = "0";   // 0: the model's own
        // Small enough that an oversized test body fits the loopback socket buffers, so the client reads the 413.
        settings["Grid:Http:MaxRequestBodyBytes"] = "65536";
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HttpLongContextCollection : ICollectionFixture<LongContextServer>
{
    public const string Name = "http-long-context";
}

/// <summary>A client that disconnects mid-stream cancels its sequence and its latent cache is freed.</summary>
[Collection(HttpLongContextCollection.Name)]
public sealed class CancellationTests(LongContextServer server)
{
    Task<double> CacheTokensAsync() => server.MetricAsync("grid_latent_cache_tokens");

    [Fact]
    public async Task DisconnectMidStreamFreesTheLatentCache()
    {
        Assert.Equal(0, await Poll.UntilAsync(CacheTokensAsync, v => v == 0));
        // Counters appear on first use.
        var generatedBefore = await server.MetricAsync("grid_generation_tokens_total", mayBeAbsent: true);
        var completedBefore = await server.MetricAsync("grid_request_duration_seconds_count", mayBeAbsent: true);
        var prompt = Golden.Load("lite_f32", "ids").PromptIds;
        int contextLength = (await server.GetJsonAsync("/v1/models"))["data"]![0]!["max_model_len"]!.GetValue<int>();
        Assert.True(contextLength > 100_000, $"the context is {contextLength} tokens, too short to be sure the generation outlasts the test");
        int maxTokens = contextLength - prompt.Length;   // the whole context, no end of sequence: it runs until cancelled
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(prompt)), ("max_tokens", maxTokens),
            ("temperature", 0), ("ignore_eos", true), ("stream", true));
        var response = await server.Http.SendAsync(server.Post("/v1/completions", body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        for (int chunks = 0; chunks < 3;)
        {
            var line = await reader.ReadLineAsync();
            Assert.NotNull(line);
            Assert.DoesNotContain("[DONE]", line);
            if (line.StartsWith("data: ")) chunks++;
        }
        // The sequence holds latent cache while it streams (it is still running: it cannot have reached its end).
        Assert.True(await Poll.UntilAsync(CacheTokensAsync, v => v > 0) > 0, "the cache gauge never rose above zero");
        Assert.True(await server.MetricAsync("grid_latent_cache_bytes") > 0);
        Assert.Equal(1, (await server.GetJsonAsync("/debug/cache"))["sequences"]!.GetValue<long>());

        reader.Dispose();
        response.Dispose();   // the client goes away mid-stream

        // Wait for the state (the cache freed), however long the machine takes to get there.
        var cache = await Poll.UntilAsync(() => server.GetJsonAsync("/debug/cache"),
            c => c["tokens"]!.GetValue<long>() == 0 && c["sequences"]!.GetValue<long>() == 0);
        Assert.Equal(0, cache["tokens"]!.GetValue<long>());
        Assert.Equal(0, cache["sequences"]!.GetValue<long>());
        Assert.Equal(0, await Poll.UntilAsync(CacheTokensAsync, v => v == 0));
        Assert.Equal(0, await Poll.UntilAsync(() => server.MetricAsync("grid_latent_cache_bytes"), v => v == 0));
        Assert.Equal(0, await Poll.UntilAsync(() => server.MetricAsync("grid_running_sequences"), v => v == 0));
        // It was cancelled, not run to the end: it stopped short of its max_tokens, and the request did not complete
        // (a request's duration is recorded only when it ends normally).
        Assert.InRange(await server.MetricAsync("grid_generation_tokens_total") - generatedBefore, 1, maxTokens - 1);
        Assert.Equal(completedBefore, await server.MetricAsync("grid_request_duration_seconds_count", mayBeAbsent: true));
    }
}
