using System.Net;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>A server whose batch holds one sequence and whose queue holds one more.</summary>
public sealed class TinyQueueServer : GridServerFixture
{
    public override string Checkpoint => "full_f32";
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Grid:Model:MaxModelLen"] = "100000";
        settings["Grid:Scheduler:MaxRunningSequences"] = "1";
        settings["Grid:Scheduler:MaxWaiting"] = "1";
        settings["Grid:Http:DebugEndpoints"] = "true";
    }
}

/// <summary>Overload over HTTP: past the queue bound a request gets 429 with OpenAI's rate-limit error and Retry-After, never a hang or a 500.</summary>
public sealed class OverloadTests(TinyQueueServer server) : IClassFixture<TinyQueueServer>
{
    static string Body(bool stream, int maxTokens) =>
        $$"""{"model": "full_f32", "prompt": [5, 6, 7], "max_tokens": {{maxTokens}}, "ignore_eos": true, "stream": {{(stream ? "true" : "false")}}}""";

    [Fact]
    public async Task PastTheQueueBoundRequestsGet429WithRetryAfterAndTheQueuedOnesStillRun()
    {
        // One endless stream runs (the batch holds one), a second waits (the queue holds one).
        using var cancelFirst = new CancellationTokenSource();
        using var first = await server.Http.SendAsync(server.Post("/v1/completions", Body(true, 90000)), HttpCompletionOption.ResponseHeadersRead, cancelFirst.Token);
        var firstBody = await first.Content.ReadAsStreamAsync();
        using (var reader = new StreamReader(firstBody, leaveOpen: true))
            while ((await reader.ReadLineAsync())?.StartsWith("data: {", StringComparison.Ordinal) != true) { }   // it is running
        var second = server.Http.SendAsync(server.Post("/v1/completions", Body(false, 3)));
        await Poll.UntilAsync(async () => JsonNode.Parse(await server.Http.GetStringAsync(server.BaseUrl + "/debug/cache"))!["waiting"]!.GetValue<int>() == 1,
            "the second request did not queue");

        // The queue is full: streamed or not, a third gets 429 at once, before any SSE.
        foreach (var stream in new[] { false, true })
        {
            using var third = await server.Http.SendAsync(server.Post("/v1/completions", Body(stream, 3)));
            var error = JsonNode.Parse(await third.Content.ReadAsStringAsync())!["error"]!;
            Assert.Equal(HttpStatusCode.TooManyRequests, third.StatusCode);
            Assert.Equal("rate_limit_exceeded", error["code"]!.GetValue<string>());
            Assert.Equal("rate_limit_error", error["type"]!.GetValue<string>());
            Assert.True(int.Parse(third.Headers.GetValues("Retry-After").Single()) >= 1);
            Assert.StartsWith("application/json", third.Content.Headers.ContentType!.ToString());
        }

        // The running stream goes away: the queued one is admitted and answers in full.
        cancelFirst.Cancel();
        first.Dispose();
        using var answer = await second;
        var json = JsonNode.Parse(await answer.Content.ReadAsStringAsync())!;
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        Assert.Equal(3, json["usage"]!["completion_tokens"]!.GetValue<int>());
    }
}
