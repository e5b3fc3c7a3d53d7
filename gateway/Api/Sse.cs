using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>
/// A server-sent-event stream as OpenAI streams them: <c>data: {json}</c> chunks, then <c>data: [DONE]</c>. While
/// nothing else is written for <c>keepAlive</c> (a request waiting in the queue, a long prefill, a stalled step)
/// it writes an SSE comment line (<c>: keep-alive</c>), which clients ignore and which keeps proxies and load
/// balancers from closing an idle connection. Writes never interleave: the keep-alive and the data share one lock.
/// Dispose it before writing anything else to the response.
/// </summary>
public sealed class SseStream : IAsyncDisposable
{
    public const string KeepAliveComment = ": keep-alive\n\n";

    readonly HttpResponse _response;
    readonly CancellationToken _cancellationToken;
    readonly TimeProvider _time;
    readonly TimeSpan _keepAlive;
    readonly SemaphoreSlim _write = new(1, 1);
    readonly ITimer? _timer;
    long _lastWrite;
    bool _closed;

    /// <summary>Keep-alive comments written so far.</summary>
    public int KeepAlives { get; private set; }

    SseStream(HttpResponse response, TimeSpan keepAlive, TimeProvider time, CancellationToken cancellationToken)
    {
        _response = response;
        _keepAlive = keepAlive;
        _time = time;
        _cancellationToken = cancellationToken;
        _lastWrite = time.GetTimestamp();
        if (keepAlive > TimeSpan.Zero)
            _timer = time.CreateTimer(_ => _ = KeepAliveAsync(), null, keepAlive, keepAlive);
    }

    /// <summary>Sends the 200 and the event-stream headers; <paramref name="keepAlive"/> zero turns keep-alive comments off.</summary>
    public static async Task<SseStream> StartAsync(HttpResponse response, TimeSpan keepAlive, TimeProvider time, CancellationToken cancellationToken)
    {
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        await response.Body.FlushAsync(cancellationToken);
        return new SseStream(response, keepAlive, time, cancellationToken);
    }

    public Task WriteAsync(JsonNode data) => WriteRawAsync(Sse.Event(data));

    public Task DoneAsync() => WriteRawAsync(Sse.Done);

    async Task WriteRawAsync(string text)
    {
        await _write.WaitAsync(_cancellationToken);
        try
        {
            ObjectDisposedException.ThrowIf(_closed, this);
            await _response.WriteAsync(text, _cancellationToken);
            await _response.Body.FlushAsync(_cancellationToken);
            _lastWrite = _time.GetTimestamp();
        }
        finally { _write.Release(); }
    }

    async Task KeepAliveAsync()
    {
        // Skip a tick while a write is in flight (it is traffic) or when the last write was recent.
        if (!_write.Wait(0)) return;
        try
        {
            if (_closed || _cancellationToken.IsCancellationRequested || _time.GetElapsedTime(_lastWrite) < _keepAlive) return;
            await _response.WriteAsync(KeepAliveComment, _cancellationToken);
            await _response.Body.FlushAsync(_cancellationToken);
            _lastWrite = _time.GetTimestamp();
            KeepAlives++;
        }
        catch (Exception) when (_cancellationToken.IsCancellationRequested || _closed) { }
        catch (IOException) { }   // the client went away: the data path sees it too
        catch (ObjectDisposedException) { }
        finally { _write.Release(); }
    }

    public async ValueTask DisposeAsync()
    {
        if (_timer is not null) await _timer.DisposeAsync();
        // Wait for a keep-alive in flight, then refuse further writes: the caller may write an error next.
        await _write.WaitAsync(CancellationToken.None);
        _closed = true;
        _write.Release();
    }
}

/// <summary>SSE framing shared by <see cref="SseStream"/> and error chunks written after a stream failed.</summary>
public static class Sse
{
    public const string Done = "data: [DONE]\n\n";

    public static string Event(JsonNode data) => "data: " + data.ToJsonString(OpenAiJson.Options) + "\n\n";

    /// <summary>Writes one event straight to the response (only once no <see cref="SseStream"/> is open on it).</summary>
    public static async Task WriteAsync(HttpResponse response, JsonNode data, CancellationToken cancellationToken)
    {
        await response.WriteAsync(Event(data), cancellationToken);
        await response.Body.FlushAsync(cancellationToken);
    }
}
