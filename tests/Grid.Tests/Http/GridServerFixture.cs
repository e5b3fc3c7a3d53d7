using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Grid.ModelCore.Tokenization;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// HTTP tests run one collection at a time, outside the parallel phase, and each collection owns one gateway: the
/// OpenTelemetry meter listener matches meters by name ("Grid.Gateway") process-wide, so two live gateways in one
/// process would share (and drop) each other's instruments.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HttpCollection : ICollectionFixture<LiteServer>
{
    public const string Name = "http";
}

/// <summary>A real gateway on a free 127.0.0.1 port, serving a golden checkpoint; ready when constructed.</summary>
public abstract class GridServerFixture : IAsyncLifetime
{
    public const int ContextLength = 512;
    WebApplication? _app;
    public string BaseUrl { get; private set; } = "";
    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromMinutes(3) };
    public abstract string Checkpoint { get; }
    public string ModelName => Checkpoint;
    public GridTokenizer Tokenizer { get; private set; } = null!;
    protected virtual void Configure(Dictionary<string, string?> settings) { }

    public async Task InitializeAsync()
    {
        var settings = new Dictionary<string, string?>
        {
            ["Grid:Model:Path"] = Golden.Dir(Checkpoint),
            ["Grid:Model:MaxModelLen"] = ContextLength.ToString(),
            ["Grid:Http:Host"] = "127.0.0.1",
            ["Grid:Http:Port"] = "0",
            ["Grid:Http:DebugEndpoints"] = "true",   // off by default; the tests read /debug/cache and /debug/steps
        };
        Configure(settings);
        _app = GridServer.Build(settings, l => l.ClearProviders().SetMinimumLevel(LogLevel.Warning));
        await _app.StartAsync();
        BaseUrl = GridServer.Addresses(_app).Single().TrimEnd('/');
        Tokenizer = GridTokenizer.Load(Golden.Dir(Checkpoint));
        await Poll.UntilAsync(async () =>
        {
            using var ready = await Http.GetAsync(BaseUrl + "/ready");
            if (ready.StatusCode != HttpStatusCode.OK) Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
            return ready.StatusCode == HttpStatusCode.OK;
        }, "the server did not become ready");
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        Tokenizer?.Dispose();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }

    public HttpRequestMessage Post(string path, string json, string? apiKey = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, BaseUrl + path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        return request;
    }

    /// <summary>POST a JSON body; returns status and parsed JSON.</summary>
    public async Task<(HttpStatusCode Status, JsonNode? Json)> PostJsonAsync(string path, JsonNode body, string? apiKey = null) =>
        await PostRawAsync(path, body.ToJsonString(), apiKey);

    public async Task<(HttpStatusCode Status, JsonNode? Json)> PostRawAsync(string path, string body, string? apiKey = null)
    {
        using var response = await Http.SendAsync(Post(path, body, apiKey));
        var text = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, text.Length == 0 ? null : JsonNode.Parse(text));
    }

    /// <summary>POST with stream=true; returns every data: chunk's JSON and whether [DONE] ended the stream.</summary>
    public async Task<(List<JsonNode> Chunks, bool Done)> StreamAsync(string path, JsonNode body, CancellationToken cancellationToken = default)
    {
        using var response = await Http.SendAsync(Post(path, body.ToJsonString()), HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancellationToken));
        var chunks = new List<JsonNode>();
        while (await reader.ReadLineAsync(cancellationToken) is { } line)
        {
            if (line.Length == 0) continue;
            Assert.StartsWith("data: ", line);
            var data = line["data: ".Length..];
            if (data == "[DONE]") return (chunks, true);
            chunks.Add(JsonNode.Parse(data)!);
        }
        return (chunks, false);
    }

    public async Task<JsonNode> GetJsonAsync(string path)
    {
        using var response = await Http.GetAsync(BaseUrl + path);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return JsonNode.Parse(await response.Content.ReadAsStringAsync())!;
    }

    /// <summary>A gauge or counter from the Prometheus text at /metrics (summed over label sets).</summary>
    public async Task<double> MetricAsync(string name, bool mayBeAbsent = false)
    {
        var text = await Http.GetStringAsync(BaseUrl + "/metrics");
        double sum = 0;
        bool found = false;
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith('#') || !(line.StartsWith(name + "{") || line.StartsWith(name + " "))) continue;
            sum += double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            found = true;
        }
        Assert.True(found || mayBeAbsent, $"metric {name} not found in /metrics");
        return sum;
    }
}

public sealed class LiteServer : GridServerFixture
{
    public override string Checkpoint => "lite_f32";
    // Small enough that an oversized test body fits the loopback socket buffers, so the client reads the 413.
    protected override void Configure(Dictionary<string, string?> settings) => settings["Grid:Http:MaxRequestBodyBytes"] = "65536";
}

public sealed class FullServer : GridServerFixture
{
    public override string Checkpoint => "full_f32";
}

/// <summary>model-core's offline output: the checkpoint loaded in this process, driven by a private scheduler.</summary>
public static class Offline
{
    static readonly Dictionary<string, Task<LocalStepExecutor>> Executors = new();

    static Task<LocalStepExecutor> ExecutorAsync(string checkpoint)
    {
        lock (Executors)
        {
            if (!Executors.TryGetValue(checkpoint, out var t))
                Executors[checkpoint] = t = EngineFactory.LoadLocalAsync(Golden.Dir(checkpoint), TorchSharp.torch.ScalarType.Float32, null, CancellationToken.None);
            return t;
        }
    }

    /// <summary>The sampled tokens (with top-<paramref name="logprobs"/>) for one prompt, alone.</summary>
    public static async Task<List<SampledToken>> GenerateAsync(string checkpoint, int[] prompt, int maxTokens, SamplingParams? sampling = null, int logprobs = 5, int[]? stopIds = null, int choice = 0)
    {
        var executor = await ExecutorAsync(checkpoint);
        await using var scheduler = new EngineLoop(executor, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, GridServerFixture.ContextLength);
        var request = new GenerationRequest
        {
            Choice = choice,
            PromptIds = prompt,
            MaxTokens = maxTokens,
            Sampling = (sampling ?? SamplingParams.Greedy) with { Logprobs = logprobs },
            StopTokenIds = stopIds ?? [],
        };
        var tokens = new List<SampledToken>();
        await foreach (var ev in scheduler.Submit(request, CancellationToken.None).ReadAllAsync())
            if (ev is TokenEvent t) tokens.Add(t.Token);
        return tokens;
    }
}

public static class Json
{
    public static int TokenId(JsonNode? token) => int.Parse(token!.GetValue<string>()["token_id:".Length..]);
    public static JsonObject Obj(params (string Key, JsonNode? Value)[] fields)
    {
        var o = new JsonObject();
        foreach (var (k, v) in fields) o[k] = v;
        return o;
    }
    public static JsonArray Ids(IEnumerable<int> ids) => new(ids.Select(i => (JsonNode)i).ToArray());
}
