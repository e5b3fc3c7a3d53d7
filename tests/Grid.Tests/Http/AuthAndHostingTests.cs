using System.ClientModel;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using OpenAI;
using OpenAI.Chat;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>A server with API keys and a small body limit.</summary>
public sealed class KeyedServer : GridServerFixture
{
    public override string Checkpoint => "lite_f32";
    protected override void Configure(Dictionary<string, string?> settings)
    {
        settings["Grid:Http:ApiKeys:0"] = "sk-first";
        settings["Grid:Http:ApiKeys:1"] = "sk-second";
        // Keys from a file (a mounted Kubernetes Secret) and from the environment's GRID_API_KEY count too.
        var file = Path.Combine(Path.GetTempPath(), $"grid-keys-{Guid.NewGuid():N}.txt");
        File.WriteAllText(file, "# one key per line\n\n  sk-from-file  \n");
        settings["Grid:Http:ApiKeysFile"] = file;
        settings["GRID_API_KEY"] = "sk-from-env";
        settings["Grid:Http:MaxRequestBodyBytes"] = "4096";
        settings["Grid:Model:ServedName"] = "lite_f32";
        settings.Remove("Grid:Http:DebugEndpoints");   // the default: off
        settings["Grid:Cluster:Dashboard"] = "true";       // the Orleans Dashboard, behind the keys
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HttpKeyedCollection : ICollectionFixture<KeyedServer>
{
    public const string Name = "http-keyed";
}

[Collection(HttpKeyedCollection.Name)]
public sealed class AuthAndHostingTests(KeyedServer keyed)
{
    const string Body = "{\"prompt\": [406, 10], \"max_tokens\": 2}";

    [Theory]
    [InlineData(null, HttpStatusCode.Unauthorized)]
    [InlineData("sk-wrong", HttpStatusCode.Unauthorized)]
    [InlineData("sk-first", HttpStatusCode.OK)]
    [InlineData("sk-second", HttpStatusCode.OK)]
    [InlineData("sk-from-file", HttpStatusCode.OK)]
    [InlineData("sk-from-env", HttpStatusCode.OK)]
    [InlineData("# one key per line", HttpStatusCode.Unauthorized)]
    public async Task ApiKeysGuardTheV1Routes(string? key, HttpStatusCode expected)
    {
        var (status, json) = await keyed.PostRawAsync("/v1/completions", Body, key);
        Assert.Equal(expected, status);
        if (expected == HttpStatusCode.Unauthorized)
        {
            Assert.Equal("invalid_api_key", json!["error"]!["code"]!.GetValue<string>());
            Assert.Equal("invalid_request_error", json["error"]!["type"]!.GetValue<string>());
        }
        // The probes stay open.
        Assert.Equal(HttpStatusCode.OK, (await keyed.Http.GetAsync(keyed.BaseUrl + "/health")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await keyed.Http.GetAsync(keyed.BaseUrl + "/ready")).StatusCode);
    }

    /// <summary>
    /// The Orleans Dashboard on the gateway (Grid:Cluster:Dashboard): its page and its API answer with the key, and its
    /// counters show the grid's own grains once a request ran through them.
    /// </summary>
    [Fact]
    public async Task TheOrleansDashboardIsServedBehindTheKey()
    {
        using var noRedirects = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false });
        using (var bare = new HttpRequestMessage(HttpMethod.Get, keyed.BaseUrl + "/dashboard"))
        {
            bare.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "sk-first");
            using var redirect = await noRedirects.SendAsync(bare);
            Assert.True((int)redirect.StatusCode is >= 300 and < 400, $"/dashboard answered {(int)redirect.StatusCode}");
            Assert.Equal("/dashboard/", redirect.Headers.Location?.OriginalString);
        }
        var (pageStatus, page) = await GetAsync("/dashboard/", "sk-first");
        Assert.Equal(HttpStatusCode.OK, pageStatus);
        Assert.Contains("<html", page, StringComparison.OrdinalIgnoreCase);
        var (versionStatus, version) = await GetAsync("/dashboard/version", "sk-first");
        Assert.Equal(HttpStatusCode.OK, versionStatus);
        Assert.Contains("version", version);

        var (status, _) = await keyed.PostRawAsync("/v1/completions", Body, "sk-first");
        Assert.Equal(HttpStatusCode.OK, status);
        // The dashboard grain gathers the silos' call statistics periodically: wait for the grid's grains to show.
        var counters = await Poll.UntilAsync(() => GetAsync("/dashboard/DashboardCounters", "sk-first"),
            r => r.Status == HttpStatusCode.OK && r.Body.Contains("AttentionGrain", StringComparison.Ordinal), TimeSpan.FromMinutes(2));
        Assert.Equal(HttpStatusCode.OK, counters.Status);
        Assert.Contains("AttentionGrain", counters.Body);
        Assert.Contains("ExpertGroupGrain", counters.Body);
    }

    async Task<(HttpStatusCode Status, string Body)> GetAsync(string path, string? key)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, keyed.BaseUrl + path);
        if (key is not null) request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        using var response = await keyed.Http.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    [Theory]
    [InlineData("/metrics")]
    [InlineData("/debug/cache")]
    [InlineData("/debug/steps")]
    [InlineData("/v1/models")]
    [InlineData("/v1/models/lite_f32")]
    [InlineData("/no/such/route")]
    [InlineData("/dashboard/")]
    [InlineData("/dashboard/DashboardCounters")]
    public async Task EveryRouteButTheProbesNeedsTheKey(string path)
    {
        foreach (var key in new[] { null, "sk-wrong" })
        {
            var (status, body) = await GetAsync(path, key);
            Assert.Equal(HttpStatusCode.Unauthorized, status);
            Assert.Equal("invalid_api_key", System.Text.Json.Nodes.JsonNode.Parse(body)!["error"]!["code"]!.GetValue<string>());
        }
        var (withKey, text) = await GetAsync(path, "sk-first");
        if (path.StartsWith("/debug/", StringComparison.Ordinal) || path == "/no/such/route")
        {
            // Debug endpoints are off unless Grid:Http:DebugEndpoints is true: with the key they are unknown routes.
            Assert.Equal(HttpStatusCode.NotFound, withKey);
            Assert.Equal("unknown_url", System.Text.Json.Nodes.JsonNode.Parse(text)!["error"]!["code"]!.GetValue<string>());
        }
        else
        {
            Assert.Equal(HttpStatusCode.OK, withKey);
            if (path == "/metrics") Assert.Contains("grid_model_ready", text);
        }
    }

    [Fact]
    public void DebugEndpointsAreOffByDefaultAndAMissingKeysFileIsAConfigurationError()
    {
        Assert.False(new Grid.Configuration.HttpOptions().DebugEndpoints);
        var e = Assert.Throws<Grid.Configuration.GridConfigurationException>(() => Grid.Gateway.Hosting.GridServer.Build(new Dictionary<string, string?>
        {
            ["Grid:Model:Path"] = Golden.Dir("lite_f32"),
            ["Grid:Http:ApiKeysFile"] = "/nonexistent/keys.txt",
        }));
        Assert.Contains("Grid:Http:ApiKeysFile", e.Message);
        var empty = Path.Combine(Path.GetTempPath(), $"grid-keys-{Guid.NewGuid():N}.txt");
        File.WriteAllText(empty, "# no keys here\n\n");
        try
        {
            e = Assert.Throws<Grid.Configuration.GridConfigurationException>(() => Grid.Gateway.Hosting.GridServer.Build(new Dictionary<string, string?>
            {
                ["Grid:Model:Path"] = Golden.Dir("lite_f32"),
                ["Grid:Http:ApiKeysFile"] = empty,
            }));
            Assert.Contains("holds no API key", e.Message);
        }
        finally { File.Delete(empty); }
    }

    [Fact]
    public async Task TheOpenAiClientAuthenticatesWithItsKey()
    {
        ChatClient Client(string key) => new OpenAIClient(new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(keyed.BaseUrl + "/v1") })
            .GetChatClient("lite_f32");
        ChatCompletion ok = await Client("sk-second").CompleteChatAsync([new UserChatMessage("hi")], new ChatCompletionOptions { MaxOutputTokenCount = 3 });
        Assert.True(ok.Usage.OutputTokenCount is >= 1 and <= 3);
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Client("sk-nope").CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(401, e.Status);
    }

    [Fact]
    public async Task ConfiguredBodyLimitGives413()
    {
        var big = "{\"prompt\": \"" + new string('a', 5000) + "\"}";
        var (status, json) = await keyed.PostRawAsync("/v1/completions", big, "sk-first");
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Equal("request_too_large", json!["error"]!["code"]!.GetValue<string>());
    }

    static int FreePort() => Grid.Configuration.GridClusterOptions.FreePort();

    [Fact]
    public async Task GridServeAnswersHealthAtOnceThenReadyAndStopsOnSigterm()
    {
        var port = FreePort();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "grid.dll"), "serve", "--model", Golden.Dir("lite_f32"), "--host", "127.0.0.1", "--port", port.ToString() })
            psi.ArgumentList.Add(a);
        psi.Environment["Grid__Model__MaxModelLen"] = "300";   // environment variables configure too
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var http = new HttpClient();
        try
        {
            // Until the process listens, connecting fails; then /health answers at once.
            var health = await Poll.UntilAsync(async () =>
            {
                try { return await http.GetAsync($"http://127.0.0.1:{port}/health"); }
                catch (HttpRequestException) { return null; }
            }, h => h is not null || p.HasExited);
            Assert.NotNull(health);
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
            var ready = await Poll.UntilAsync(async () =>
            {
                var r = await http.GetAsync($"http://127.0.0.1:{port}/ready");
                if (r.StatusCode != HttpStatusCode.OK)
                {
                    Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
                    Assert.Contains("model_not_ready", await r.Content.ReadAsStringAsync());
                }
                return r;
            }, r => r.StatusCode == HttpStatusCode.OK);
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
            var models = await http.GetStringAsync($"http://127.0.0.1:{port}/v1/models");
            Assert.Contains("\"max_model_len\":300", models);
        }
        finally
        {
            Process.Start("kill", ["-TERM", p.Id.ToString()])!.WaitForExit();
            if (!p.WaitForExit(Poll.Deadline)) p.Kill(true);
        }
        Assert.Equal(0, p.ExitCode);
        Assert.Contains("loading weights", await stdout + await stderr);
    }

    [Theory]
    [InlineData(new[] { "serve", "--port", "abc" }, "abc")]
    [InlineData(new[] { "serve", "--port", "70000" }, "Port must be between 0 and 65535")]
    [InlineData(new[] { "serve", "--model", "/nonexistent" }, "model folder not found")]
    [InlineData(new[] { "serve", "--dtype", "int3" }, "Grid:Model:Dtype: 'int3' is not supported")]
    [InlineData(new[] { "serve", "--bogus" }, "--bogus")]
    public void BadServeFlagsGiveAOneLineErrorAndNonZeroExit(string[] args, string message)
    {
        var (code, _, stderr) = GenerateCliTests.RunGrid(args);
        Assert.NotEqual(0, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(message, lines[0]);
    }
}
