using System.Net;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>A client that disconnects mid-stream cancels its sequence and its latent cache is freed.</summary>
[Collection(HttpCollection.Name)]
public sealed class CancellationTests(LiteServer lite)
{
    static async Task<double> PollAsync(Func<Task<double>> read, Func<double, bool> until)
    {
        double value = await read();
        for (int i = 0; i < 600 && !until(value); i++)
        {
            await Task.Delay(50);
            value = await read();
        }
        return value;
    }

    [Fact]
    public async Task DisconnectMidStreamFreesTheLatentCache()
    {
        Assert.Equal(0, await PollAsync(() => lite.MetricAsync("grid_latent_cache_tokens"), v => v == 0));
        var generatedBefore = await lite.MetricAsync("grid_generation_tokens_total", mayBeAbsent: true);   // a counter appears on first use
        const int maxTokens = 480;
        var body = Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(Golden.Load("lite_f32", "ids").PromptIds)), ("max_tokens", maxTokens),
            ("temperature", 0), ("ignore_eos", true), ("stream", true));
        var response = await lite.Http.SendAsync(lite.Post("/v1/completions", body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        for (int chunks = 0; chunks < 3;)
            if ((await reader.ReadLineAsync())!.StartsWith("data: ")) chunks++;
        // The sequence holds latent cache while it streams.
        var during = await PollAsync(() => lite.MetricAsync("grid_latent_cache_tokens"), v => v > 0);
        Assert.True(during > 0, "the cache gauge never rose above zero");
        Assert.True(await lite.MetricAsync("grid_latent_cache_bytes") > 0);

        reader.Dispose();
        response.Dispose();   // the client goes away mid-stream

        Assert.Equal(0, await PollAsync(() => lite.MetricAsync("grid_latent_cache_tokens"), v => v == 0));
        Assert.Equal(0, await lite.MetricAsync("grid_latent_cache_bytes"));
        Assert.Equal(0, await PollAsync(() => lite.MetricAsync("grid_running_sequences"), v => v == 0));
        var cache = await lite.GetJsonAsync("/debug/cache");
        Assert.Equal(0, cache["tokens"]!.GetValue<long>());
        Assert.Equal(0, cache["sequences"]!.GetValue<long>());
        // It was cancelled, not run to the end.
        Assert.True(await lite.MetricAsync("grid_generation_tokens_total") - generatedBefore < maxTokens);
    }
}
