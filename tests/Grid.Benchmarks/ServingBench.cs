using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.Configuration;
using Grid.ModelCore.Config;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Serving: an open-loop load generator (Poisson arrivals, uniform prompt and output lengths) streaming
/// /v1/completions from <c>grid serve</c> at several request rates: throughput, TTFT and inter-token latency, errors.
/// </summary>
public static class ServingBench
{
    public sealed record Workload(double Rate, double DurationS, int PromptMin, int PromptMax, int OutputMin, int OutputMax);

    public sealed record RequestResult(bool Ok, double StartS, double EndS, double TtftS, List<double> ItlS, int OutputTokens, string? Error);

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("serving", "Serving: open-loop HTTP load against grid serve");
        var config = ModelConfig.Load(Path.Combine(c.ModelDir, "config.json"));
        Workload[] loads = c.Quick
            ? [new(0.25, 15, 16, 48, 4, 16), new(0.75, 15, 16, 48, 4, 16)]
            : [new(0.1, 90, 32, 256, 16, 128), new(0.2, 90, 32, 256, 16, 128), new(0.4, 90, 32, 256, 16, 128), new(0.8, 90, 32, 256, 16, 128)];
        const int maxRunning = 32;
        await using var server = await GridServeProcess.StartAsync(c, maxRunning, ct);
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 1024, PooledConnectionLifetime = TimeSpan.FromMinutes(10) })
        {
            BaseAddress = server.BaseAddress,
            Timeout = Timeout.InfiniteTimeSpan,
        };
        c.Log("serving: warm-up request");
        var warm = await SendAsync(http, server.ModelName, ModelCoreBench.Prompt(config, 32), 4, Stopwatch.StartNew(), ct);
        if (!warm.Ok) throw new InvalidOperationException("warm-up request failed: " + warm.Error);

        var results = new JsonArray();
        var rows = new List<string[]>();
        int seed = 0;
        foreach (var w in loads)
        {
            c.Log($"serving: {w.Rate} req/s for {w.DurationS} s (prompt {w.PromptMin}-{w.PromptMax}, output {w.OutputMin}-{w.OutputMax} tokens)");
            var rng = new Random(42 + seed++);
            var clock = Stopwatch.StartNew();
            var tasks = new List<Task<RequestResult>>();
            double at = 0;
            int n = 0;
            while (true)
            {
                at += -Math.Log(1 - rng.NextDouble()) / w.Rate;   // exponential gaps: Poisson arrivals
                if (at > w.DurationS) break;
                var prompt = ModelCoreBench.Prompt(config, rng.Next(w.PromptMin, w.PromptMax + 1), salt: 1000 + n++);
                int maxTokens = rng.Next(w.OutputMin, w.OutputMax + 1);
                double due = at;
                tasks.Add(Task.Run(async () =>
                {
                    var wait = TimeSpan.FromSeconds(due) - clock.Elapsed;
                    if (wait > TimeSpan.Zero) await Task.Delay(wait, ct);
                    return await SendAsync(http, server.ModelName, prompt, maxTokens, clock, ct);
                }, ct));
            }
            var done = await Task.WhenAll(tasks);
            var ok = done.Where(r => r.Ok).ToList();
            double span = done.Length == 0 ? double.NaN : done.Max(r => r.EndS) - done.Min(r => r.StartS);
            int tokens = ok.Sum(r => r.OutputTokens);
            var ttft = ok.Select(r => r.TtftS * 1000).ToList();
            var itl = ok.SelectMany(r => r.ItlS).Select(x => x * 1000).ToList();
            var errors = done.Where(r => !r.Ok).Select(r => r.Error ?? "?").GroupBy(e => e).ToDictionary(g => g.Key, g => g.Count());
            var entry = new JsonObject
            {
                ["rate_offered"] = w.Rate,
                ["duration_s"] = w.DurationS,
                ["prompt_tokens"] = $"{w.PromptMin}-{w.PromptMax}",
                ["output_tokens"] = $"{w.OutputMin}-{w.OutputMax}",
                ["requests"] = done.Length,
                ["completed"] = ok.Count,
                ["errors"] = done.Length - ok.Count,
                ["error_kinds"] = new JsonObject(errors.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                ["wall_s"] = Num(span, 2),
                ["requests_per_second"] = Num(ok.Count / span, 3),
                ["output_tokens_per_second"] = Num(tokens / span, 2),
                ["ttft_ms_p50"] = Num(ModelCoreBench.Percentile(ttft, 50), 1),
                ["ttft_ms_p99"] = Num(ModelCoreBench.Percentile(ttft, 99), 1),
                ["itl_ms_p50"] = Num(ModelCoreBench.Percentile(itl, 50), 1),
                ["itl_ms_p99"] = Num(ModelCoreBench.Percentile(itl, 99), 1),
            };
            results.Add(entry);
            rows.Add([F(w.Rate, 2), done.Length.ToString(), F(ok.Count / span, 2), F(tokens / span), F(ModelCoreBench.Percentile(ttft, 50), 0), F(ModelCoreBench.Percentile(ttft, 99), 0),
                F(ModelCoreBench.Percentile(itl, 50), 0), F(ModelCoreBench.Percentile(itl, 99), 0), (done.Length - ok.Count).ToString()]);
            c.Log($"serving {w.Rate} req/s: {ok.Count}/{done.Length} ok, {tokens / span:F1} out tok/s, TTFT p50 {entry["ttft_ms_p50"]} ms, ITL p50 {entry["itl_ms_p50"]} ms");
        }
        s.Data["max_running_sequences"] = maxRunning;
        s.Data["results"] = results;
        s.Table(["offered req/s", "requests", "done req/s", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "errors"], rows);
        s.Notes.Add($"grid serve (embedded grid, {c.BuildConfig} build, --max-running-sequences {maxRunning}) on loopback; streaming /v1/completions with token-id prompts (uniform length), " +
                    "uniform max_tokens, temperature 0, ignore_eos, logprobs 0 (so every token is its own SSE chunk; the byte tokenizer can otherwise hold back partial UTF-8).");
        s.Notes.Add("Open loop: arrival times are drawn up front (exponential gaps) and requests are sent on time whether or not earlier ones finished. Throughput = output tokens of completed requests / (last end - first start); TTFT from send to the first token chunk; ITL = gaps between token chunks.");
        s.Notes.Add("The load generator runs in the same 2-core machine as the server and takes some of its CPU.");
        var top = (JsonObject)results[^1]!;
        s.Summary.Add(($"serving at {top["rate_offered"]} req/s: output tok/s, TTFT p50/p99, ITL p50/p99",
            $"{top["output_tokens_per_second"]} tok/s, {top["ttft_ms_p50"]}/{top["ttft_ms_p99"]} ms, {top["itl_ms_p50"]}/{top["itl_ms_p99"]} ms, {top["errors"]} errors",
            "decode step time at the running batch size (prefills of new prompts join steps and stretch ITL); 2 cores shared with the load generator"));
        return s;
    }

    static async Task<RequestResult> SendAsync(HttpClient http, string model, int[] prompt, int maxTokens, Stopwatch clock, CancellationToken ct)
    {
        double start = clock.Elapsed.TotalSeconds, first = double.NaN, last = double.NaN;
        var itl = new List<double>();
        int tokens = 0;
        try
        {
            var body = new JsonObject
            {
                ["model"] = model,
                ["prompt"] = new JsonArray(prompt.Select(t => (JsonNode)t).ToArray()),
                ["max_tokens"] = maxTokens,
                ["temperature"] = 0,
                ["ignore_eos"] = true,
                ["stream"] = true,
                ["logprobs"] = 0,
            };
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromMinutes(5));
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"),
            };
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            if (!response.IsSuccessStatusCode) return new(false, start, clock.Elapsed.TotalSeconds, double.NaN, itl, 0, $"HTTP {(int)response.StatusCode}");
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(timeout.Token));
            while (await reader.ReadLineAsync(timeout.Token) is { } line)
            {
                if (!line.StartsWith("data: ")) continue;
                var data = line["data: ".Length..];
                if (data == "[DONE]") break;
                using var doc = JsonDocument.Parse(data);
                if (doc.RootElement.TryGetProperty("error", out _)) return new(false, start, clock.Elapsed.TotalSeconds, double.NaN, itl, tokens, "stream error");
                var choices = doc.RootElement.GetProperty("choices");
                if (choices.GetArrayLength() == 0) continue;
                var choice = choices[0];
                int n = choice.TryGetProperty("logprobs", out var lp) && lp.ValueKind == JsonValueKind.Object ? lp.GetProperty("tokens").GetArrayLength() : 0;
                if (n == 0) continue;
                double now = clock.Elapsed.TotalSeconds;
                if (double.IsNaN(first)) first = now;
                else itl.Add((now - last) / n);
                last = now;
                tokens += n;
            }
            if (tokens != maxTokens) return new(false, start, clock.Elapsed.TotalSeconds, first - start, itl, tokens, $"short stream ({tokens} of {maxTokens} tokens)");
            return new(true, start, clock.Elapsed.TotalSeconds, first - start, itl, tokens, null);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            return new(false, start, clock.Elapsed.TotalSeconds, double.NaN, itl, tokens, e.GetType().Name);
        }
    }
}

/// <summary><c>grid serve</c> as a child process on a free port (this program's build configuration), killed on dispose or exit.</summary>
public sealed class GridServeProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly EventHandler _onExit;

    public Uri BaseAddress { get; }
    public string ModelName { get; }

    GridServeProcess(Process process, Uri baseAddress, string modelName)
    {
        _process = process;
        BaseAddress = baseAddress;
        ModelName = modelName;
        _onExit = (_, _) => Kill();
        AppDomain.CurrentDomain.ProcessExit += _onExit;
    }

    public static async Task<GridServeProcess> StartAsync(BenchContext c, int maxRunning, CancellationToken ct)
    {
        var dll = Path.Combine(c.RepoRoot, "gateway", "bin", c.BuildConfig, "net10.0", "grid.dll");
        if (!File.Exists(dll)) throw new FileNotFoundException($"{dll} not found (build the gateway in {c.BuildConfig})");
        int port = GridClusterOptions.FreePort();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "serve", "--model", c.ModelDir, "--port", port.ToString(), "--host", "127.0.0.1", "--max-running-sequences", maxRunning.ToString() })
            psi.ArgumentList.Add(a);
        psi.Environment["Logging__LogLevel__Default"] = "Warning";
        c.Log($"serving: starting grid serve on port {port}");
        var p = Process.Start(psi)!;
        var log = new List<string>();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.Add(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.Add(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var server = new GridServeProcess(p, new Uri($"http://127.0.0.1:{port}"), new DirectoryInfo(c.ModelDir).Name);
        try
        {
            using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(5) };
            var sw = Stopwatch.StartNew();
            while (true)
            {
                if (p.HasExited) throw new InvalidOperationException($"grid serve exited with {p.ExitCode}: {string.Join(" | ", log.TakeLast(5))}");
                if (sw.Elapsed > TimeSpan.FromMinutes(3)) throw new TimeoutException("grid serve not ready after 3 minutes");
                try
                {
                    using var r = await http.GetAsync("/ready", ct);
                    if (r.IsSuccessStatusCode) break;
                }
                catch (HttpRequestException) { }
                catch (TaskCanceledException) when (!ct.IsCancellationRequested) { }
                await Task.Delay(250, ct);
            }
            c.Log($"serving: ready after {sw.Elapsed.TotalSeconds:F1} s");
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    void Kill()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); }
        catch (InvalidOperationException) { }
    }

    public async ValueTask DisposeAsync()
    {
        AppDomain.CurrentDomain.ProcessExit -= _onExit;
        Kill();
        await _process.WaitForExitAsync();
        _process.Dispose();
    }
}
