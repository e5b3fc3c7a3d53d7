using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// The real multi-process cluster from deploy/local/cluster.sh: a Redis server for membership, 3 silo processes
/// with the expert groups spread over them, and the gateway process; golden outputs over HTTP.
/// </summary>
public sealed class LoopbackClusterTests
{
    public static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "deploy", "local", "cluster.sh"))) return dir.FullName;
        throw new DirectoryNotFoundException("repository root not found");
    }

    static (int Code, string Output) Script(string stateDir, params string[] args)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = RepoRoot() };
        psi.ArgumentList.Add(Path.Combine(RepoRoot(), "deploy", "local", "cluster.sh"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["GRID_CLUSTER_DIR"] = stateDir;
        psi.Environment["GRID_BUILD_CONFIG"] = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(true); throw new TimeoutException("cluster.sh did not finish"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Theory]
    [InlineData("--quantization", "int4", "--quantization must be none, int8 or fp8 (got 'int4')")]
    [InlineData("--kv-cache-dtype", "fp16", "--kv-cache-dtype must be auto, int8 or fp8 (got 'fp16')")]
    [InlineData("--silos", "0", "--silos must be a positive integer")]
    public void BadOptionsFailBeforeStartingAnything(string option, string value, string message)
    {
        var state = ModelTestKit.TempDir("cluster-bad");
        var (code, output) = Script(state, "up", option, value, "--no-build");
        Assert.Equal(2, code);
        Assert.Contains("cluster.sh: " + message, output);
        Assert.Empty(Directory.GetFiles(state, "*.pid"));
    }

    [Theory]
    [InlineData("full_f32")]
    [InlineData("lite_f32")]
    public async Task GoldenThroughThreeSiloProcessesWithRedisMembership(string checkpoint)
    {
        var state = ModelTestKit.TempDir("cluster");
        int port = Grid.Configuration.GridClusterOptions.FreePort();
        int redisPort = Grid.Configuration.GridClusterOptions.FreePort();
        int basePort = checkpoint == "full_f32" ? 23000 : 24000;
        int metricsPort = basePort + 300;
        try
        {
            var (code, output) = Script(state, "up", "--silos", "3", "--model", Golden.Dir(checkpoint), "--port", port.ToString(),
                "--redis-port", redisPort.ToString(), "--base-port", basePort.ToString(), "--metrics-port", metricsPort.ToString(), "--no-build", "--timeout", "240");
            Assert.True(code == 0, output);
            Assert.Contains("cluster ready", output);
            Assert.Equal(4, Directory.GetFiles(state, "silo*.log").Length + 1);   // three silos (+ the gateway)
            // Each silo process loaded only its own part (logged by the silo).
            var silo1 = File.ReadAllText(Path.Combine(state, "silo1.log"));
            Assert.Contains("attention=False groups=[1]", silo1);
            Assert.Contains("attention=True groups=[0,3]", File.ReadAllText(Path.Combine(state, "silo0.log")));

            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromMinutes(2) };
            foreach (var prompt in Golden.Prompts)
            {
                var expected = Golden.Load(checkpoint, prompt);
                var body = new JsonObject
                {
                    ["model"] = checkpoint,
                    ["prompt"] = new JsonArray(expected.PromptIds.Select(i => (JsonNode)i).ToArray()),
                    ["max_tokens"] = 16,
                    ["temperature"] = 0,
                    ["ignore_eos"] = true,
                    ["logprobs"] = 5,
                    ["return_tokens_as_token_ids"] = true,
                };
                using var response = await http.PostAsJsonAsync("/v1/completions", body);
                var text = await response.Content.ReadAsStringAsync();
                Assert.True(response.StatusCode == HttpStatusCode.OK, text);
                expected.AssertLegacyLogprobs(JsonNode.Parse(text)!["choices"]![0]!["logprobs"]!, prompt);
            }
            // The engine frees a finished sequence's cache after its last token went out: wait for that state.
            var cache = await Poll.UntilAsync(async () => JsonNode.Parse(await http.GetStringAsync("/debug/cache"))!,
                c => c["tokens"]!.GetValue<long>() == 0);
            Assert.Equal(0, cache["tokens"]!.GetValue<long>());
            Assert.Equal(0, cache["sequences"]!.GetValue<long>());
            if (checkpoint == "full_f32") await PrometheusScrapesTheClusterAsync(state, port, metricsPort);
        }
        finally
        {
            var (code, output) = Script(state, "down");
            Assert.True(code == 0, output);
        }
        // Everything it started is gone.
        Assert.Empty(Directory.GetFiles(state, "*.pid"));
    }

    /// <summary>A real Prometheus scrapes the gateway and the three silos; the served work shows in its queries.</summary>
    static async Task PrometheusScrapesTheClusterAsync(string state, int gatewayPort, int metricsPort)
    {
        int promPort = Grid.Configuration.GridClusterOptions.FreePort();
        var config = Path.Combine(state, "prometheus.yml");
        File.WriteAllText(config, $$"""
            global: { scrape_interval: 1s }
            scrape_configs:
              - job_name: grid-gateway
                static_configs: [{ targets: ["127.0.0.1:{{gatewayPort}}"] }]
              - job_name: grid-silo
                static_configs: [{ targets: ["127.0.0.1:{{metricsPort}}", "127.0.0.1:{{metricsPort + 1}}", "127.0.0.1:{{metricsPort + 2}}"] }]
            """);
        var psi = new ProcessStartInfo("prometheus") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { $"--config.file={config}", $"--storage.tsdb.path={Path.Combine(state, "tsdb")}", $"--web.listen-address=127.0.0.1:{promPort}" })
            psi.ArgumentList.Add(a);
        using var prometheus = Process.Start(psi)!;
        prometheus.OutputDataReceived += (_, _) => { };
        prometheus.ErrorDataReceived += (_, _) => { };
        prometheus.BeginOutputReadLine();
        prometheus.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{promPort}") };
            async Task<JsonArray> QueryAsync(string q)
            {
                try
                {
                    var json = JsonNode.Parse(await http.GetStringAsync("/api/v1/query?query=" + Uri.EscapeDataString(q)))!;
                    return json["data"]!["result"]!.AsArray();
                }
                catch (HttpRequestException) { return []; }
            }
            static double Value(JsonArray result) =>
                result.Count == 1 ? double.Parse(result[0]!["value"]![1]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture) : 0;
            // Wait for the state (every target scraped after the work was counted), not for a number of scrapes.
            var (up, groups, requests, reserved) = await Poll.UntilAsync(async () =>
                (Up: await QueryAsync("up == 1"), Groups: await QueryAsync("sum by (group) (grid_expert_calls_total)"),
                    Requests: await QueryAsync("sum(grid_requests_total)"), Reserved: await QueryAsync("grid_silo_latent_cache_reserved_bytes > 0")),
                r => r.Up.Count == 4 && r.Groups.Count == 4 && Value(r.Requests) >= 4 && r.Reserved.Count >= 1);
            Assert.Equal(4, up.Count);                      // the gateway and three silos are scraped
            Assert.Equal(4, groups.Count);                  // every expert group served calls, on its own silo
            Assert.True(Value(requests) >= 4);
            Assert.Single(reserved);                        // only the attention silo holds a latent cache pool
        }
        finally
        {
            prometheus.Kill(true);
            prometheus.WaitForExit(10_000);
        }
    }
}
