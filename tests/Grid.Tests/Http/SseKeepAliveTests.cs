using System.Text;
using System.Text.Json.Nodes;
using Grid.Gateway.Api;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>SSE keep-alive comments: written after a silence of the interval, never between data events, never after the stream closed.</summary>
public class SseKeepAliveTests
{
    static (DefaultHttpContext Http, MemoryStream Body) NewResponse()
    {
        var http = new DefaultHttpContext();
        var body = new MemoryStream();
        http.Response.Body = body;
        return (http, body);
    }

    static string Text(MemoryStream body) => Encoding.UTF8.GetString(body.ToArray());

    [Fact]
    public async Task ASilentStreamGetsACommentPerIntervalAndDataResetsTheClock()
    {
        var (http, body) = NewResponse();
        var time = new FakeTimeProvider();
        var sse = await SseStream.StartAsync(http.Response, TimeSpan.FromSeconds(15), time, CancellationToken.None);
        Assert.Equal("text/event-stream; charset=utf-8", http.Response.ContentType);

        time.Advance(TimeSpan.FromSeconds(14));
        Assert.Equal("", Text(body));                       // not yet silent for the interval
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => Task.FromResult(sse.KeepAlives == 1), "one keep-alive after 15 s of silence");
        Assert.Equal(SseStream.KeepAliveComment, Text(body));

        time.Advance(TimeSpan.FromSeconds(10));
        await sse.WriteAsync(new JsonObject { ["n"] = 1 });
        time.Advance(TimeSpan.FromSeconds(5));              // a tick, but the data was written 5 s ago
        Assert.Equal(1, sse.KeepAlives);
        time.Advance(TimeSpan.FromSeconds(15));
        await Poll.UntilAsync(() => Task.FromResult(sse.KeepAlives == 2), "a second keep-alive once silent again");
        await sse.DoneAsync();
        await sse.DisposeAsync();
        time.Advance(TimeSpan.FromSeconds(60));              // closed: the timer is gone
        Assert.Equal(2, sse.KeepAlives);
        Assert.Equal(SseStream.KeepAliveComment + "data: {\"n\":1}\n\n" + SseStream.KeepAliveComment + "data: [DONE]\n\n", Text(body));
    }

    [Fact]
    public async Task ZeroTurnsKeepAliveOffAndAClosedStreamRefusesWrites()
    {
        var (http, body) = NewResponse();
        var time = new FakeTimeProvider();
        var sse = await SseStream.StartAsync(http.Response, TimeSpan.Zero, time, CancellationToken.None);
        time.Advance(TimeSpan.FromMinutes(10));
        Assert.Equal(0, sse.KeepAlives);
        Assert.Equal("", Text(body));
        await sse.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => sse.WriteAsync(new JsonObject()));
    }

    [Fact]
    public async Task KeepAlivesAndDataNeverInterleave()
    {
        var (http, body) = NewResponse();
        var time = new FakeTimeProvider();
        var sse = await SseStream.StartAsync(http.Response, TimeSpan.FromSeconds(1), time, CancellationToken.None);
        var writer = Task.Run(async () =>
        {
            for (int i = 0; i < 2000; i++) await sse.WriteAsync(new JsonObject { ["i"] = i, ["pad"] = new string('x', 64) });
        });
        while (!writer.IsCompleted) time.Advance(TimeSpan.FromSeconds(1));
        await writer;
        await sse.DisposeAsync();
        // Every event is whole: the text splits into complete "data: ..." or keep-alive frames.
        var frames = Text(body).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2000 + sse.KeepAlives, frames.Length);
        Assert.All(frames, f => Assert.True(f == ": keep-alive" || (f.StartsWith("data: {\"i\":") && f.EndsWith("\"}")), f));
    }
}
