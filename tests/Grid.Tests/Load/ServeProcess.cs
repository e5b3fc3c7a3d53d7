using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Grid.Tests.Load;

/// <summary>
/// One real <c>grid serve</c> process on a free loopback port (the built gateway, started as a user would), with what
/// the load tests read from outside: its resident memory from /proc and its cache from /debug/cache.
/// </summary>
public sealed class ServeProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly string _log;

    public HttpClient Http { get; }
    public int Pid => _process.Id;

    ServeProcess(Process process, string log, int port)
    {
        _process = process;
        _log = log;
        // No client-side timeout and no connection cap: hundreds of streams stay open at once.
        Http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = int.MaxValue, PooledConnectionLifetime = TimeSpan.FromMinutes(30) })
        {
            BaseAddress = new Uri($"http://127.0.0.1:{port}"),
            Timeout = Timeout.InfiniteTimeSpan,
        };
    }

    /// <summary>Starts <c>grid serve --model <paramref name="model"/></c> with <paramref name="settings"/> (configuration keys, passed as environment) and waits for /ready.</summary>
    public static async Task<ServeProcess> StartAsync(string model, IDictionary<string, string> settings, string name)
    {
        int port = Grid.Configuration.GridClusterOptions.FreePort();
        var root = Grid.Tests.Cluster.LoopbackClusterTests.RepoRoot();
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        var log = Path.Combine(ModelTestKit.TempDir(name), "serve.log");
        var psi = new ProcessStartInfo("bash") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"exec dotnet '{root}/gateway/bin/{config}/net10.0/grid.dll' serve --model '{model}' --host 127.0.0.1 --port {port} > '{log}' 2>&1");
        psi.Environment["Grid__Http__DebugEndpoints"] = "true";
        foreach (var (key, value) in settings) psi.Environment[key.Replace(":", "__")] = value;
        var serve = new ServeProcess(Process.Start(psi)!, log, port);
        await Poll.UntilAsync(async () =>
        {
            if (serve._process.HasExited) throw new InvalidOperationException("grid serve exited: " + serve.LogTail());
            try { return (await serve.Http.GetAsync("/ready")).IsSuccessStatusCode; } catch (HttpRequestException) { return false; }
        }, "grid serve did not become ready");
        return serve;
    }

    /// <summary>A field of /proc/PID/status in bytes: VmRSS (resident now) or VmHWM (the peak resident so far).</summary>
    public long Memory(string field = "VmRSS")
    {
        foreach (var line in File.ReadLines($"/proc/{Pid}/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        throw new InvalidOperationException($"/proc/{Pid}/status has no {field}");
    }

    public async Task<JsonNode> CacheAsync() => JsonNode.Parse(await Http.GetStringAsync("/debug/cache"))!;

    /// <summary>Waits for the state "no sequence holds latent cache, nothing runs or waits".</summary>
    public Task WaitIdleAsync() => Poll.UntilAsync(async () =>
    {
        var cache = await CacheAsync();
        return cache["bytes_in_use"]!.GetValue<long>() == 0 && cache["sequences"]!.GetValue<long>() == 0
               && cache["running"]!.GetValue<int>() == 0 && cache["waiting"]!.GetValue<int>() == 0;
    }, "the server did not go idle with its latent cache empty");

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Waits for the process to exit by itself (after a SIGTERM, say).</summary>
    public Task WaitForExitAsync(CancellationToken cancellationToken = default) => _process.WaitForExitAsync(cancellationToken);

    public string LogTail(int lines = 30)
    {
        try { return string.Join("\n", File.ReadLines(_log).TakeLast(lines)); }
        catch (IOException) { return "(no log)"; }
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
