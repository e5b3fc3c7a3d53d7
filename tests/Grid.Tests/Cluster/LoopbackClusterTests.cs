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
    static string RepoRoot()
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
    [InlineData("full_f32")]
    [InlineData("lite_f32")]
    public async Task GoldenThroughThreeSiloProcessesWithRedisMembership(string checkpoint)
    {
        var state = ModelTestKit.TempDir("cluster");
        int port = Grid.Grains.Hosting.GridClusterOptions.FreePort();
        int redisPort = Grid.Grains.Hosting.GridClusterOptions.FreePort();
        int basePort = checkpoint == "full_f32" ? 23000 : 24000;
        try
        {
            var (code, output) = Script(state, "up", "--silos", "3", "--model", Golden.Dir(checkpoint), "--port", port.ToString(),
                "--redis-port", redisPort.ToString(), "--base-port", basePort.ToString(), "--no-build", "--timeout", "240");
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
                var lp = JsonNode.Parse(text)!["choices"]![0]!["logprobs"]!;
                var tokens = lp["tokens"]!.AsArray().Select(t => int.Parse(t!.GetValue<string>()["token_id:".Length..])).ToArray();
                Assert.Equal(expected.GeneratedIds, tokens);
                var top5 = expected.StepTop5;
                for (int s = 0; s < 16; s++)
                    foreach (var (id, logprob) in top5[s])
                        Assert.True(Math.Abs(lp["top_logprobs"]![s]![$"token_id:{id}"]!.GetValue<double>() - logprob) < 1e-3, $"{prompt} step {s} id {id}");
            }
            var cache = JsonNode.Parse(await http.GetStringAsync("/debug/cache"))!;
            Assert.Equal(0, cache["tokens"]!.GetValue<long>());
        }
        finally
        {
            var (code, output) = Script(state, "down");
            Assert.True(code == 0, output);
        }
        // Everything it started is gone.
        Assert.Empty(Directory.GetFiles(state, "*.pid"));
    }
}
