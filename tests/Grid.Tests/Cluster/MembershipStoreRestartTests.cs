using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Grid.Configuration;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>
/// The membership store (Redis) of a real multi-process cluster is killed during a streaming completion and a new,
/// empty Redis takes its port: the stream finishes, new requests are served, the silos' rows are back in Redis (the
/// silos' MembershipStoreGuard restores the table) and a silo started afterwards joins.
/// </summary>
public sealed class MembershipStoreRestartTests
{
    static (int Code, string Output) Run(string file, IEnumerable<string> args, string? stateDir = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = LoopbackClusterTests.RepoRoot() };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (stateDir is not null) psi.Environment["GRID_CLUSTER_DIR"] = stateDir;
        psi.Environment["GRID_BUILD_CONFIG"] = BuildConfig;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(true); throw new TimeoutException($"{file} did not finish"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    static string BuildConfig => AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";

    static (int Code, string Output) Script(string stateDir, params string[] args) =>
        Run("bash", [Path.Combine(LoopbackClusterTests.RepoRoot(), "deploy", "local", "cluster.sh"), .. args], stateDir);

    static string RedisCli(int port, params string[] args)
    {
        var (code, output) = Run("redis-cli", ["-p", port.ToString(), "--raw", .. args]);
        return code == 0 ? output : "";
    }

    /// <summary>The Orleans status of every row of the membership hash, by silo address (Redis hash: field, value, field, value...).</summary>
    static Dictionary<string, int> Rows(int redisPort, string table)
    {
        var lines = RedisCli(redisPort, "HGETALL", table).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var rows = new Dictionary<string, int>();
        for (int i = 0; i + 1 < lines.Length; i += 2)
            if (lines[i] != "Version") rows[lines[i]] = JsonNode.Parse(lines[i + 1])!["Status"]!.GetValue<int>();
        return rows;
    }

    const int Active = 3;

    [Fact]
    public async Task StreamFinishesAndSilosReRegisterWhenRedisRestartsEmpty()
    {
        var state = ModelTestKit.TempDir("membership-store");
        int port = GridClusterOptions.FreePort();
        int redisPort = GridClusterOptions.FreePort();
        const int basePort = 25000;
        const int maxTokens = 300;
        try
        {
            var (code, output) = Script(state, "up", "--silos", "3", "--model", Golden.Dir("full_f32"), "--port", port.ToString(),
                "--redis-port", redisPort.ToString(), "--base-port", basePort.ToString(), "--metrics-port", "0", "--no-build", "--timeout", "240");
            Assert.True(code == 0, output);
            var clusterId = File.ReadAllText(Path.Combine(state, "env")).Split(' ', '\n').Single(w => w.StartsWith("Grid__Cluster__ClusterId=", StringComparison.Ordinal)).Split('=')[1];
            var table = $"grid/members/{clusterId}";
            Assert.Equal(3, Rows(redisPort, table).Count(r => r.Value == Active));

            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromMinutes(5) };
            var body = new JsonObject
            {
                ["prompt"] = "The membership store restarts",
                ["max_tokens"] = maxTokens,
                ["temperature"] = 0,
                ["ignore_eos"] = true,
                ["stream"] = true,
                ["stream_options"] = new JsonObject { ["include_usage"] = true },
            };
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            int chunks = 0;
            string? finish = null;
            int? completionTokens = null;
            var reading = Task.Run(async () =>
            {
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
                while (await reader.ReadLineAsync() is { } line)
                {
                    if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
                    var chunk = JsonNode.Parse(line["data: ".Length..])!;
                    if (chunk["choices"]!.AsArray() is [{ } choice, ..])
                    {
                        Interlocked.Increment(ref chunks);
                        if (choice["finish_reason"]?.GetValue<string>() is { } f) finish = f;
                    }
                    if (chunk["usage"] is JsonObject usage) completionTokens = usage["completion_tokens"]!.GetValue<int>();
                }
            });
            // Some tokens have arrived: the stream is running.
            await Poll.UntilAsync(() => Task.FromResult(Volatile.Read(ref chunks) >= 3 || reading.IsCompleted), "first streamed tokens");

            // kill -9 the membership store, then a new, empty one on the same port (cluster.sh's flags); its pid goes
            // where cluster.sh keeps Redis's, so `down` stops it.
            var redisPidFile = Path.Combine(state, "redis.pid");
            using (var redis = Process.GetProcessById(int.Parse(File.ReadAllText(redisPidFile).Trim())))
            {
                redis.Kill();
                Assert.True(redis.WaitForExit(30_000));
            }
            File.Delete(redisPidFile);
            (code, output) = Run("redis-server", ["--port", redisPort.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes",
                "--pidfile", redisPidFile, "--logfile", Path.Combine(state, "redis-restarted.log")]);
            Assert.True(code == 0, output);
            await Poll.UntilAsync(() => Task.FromResult(File.Exists(redisPidFile) && RedisCli(redisPort, "PING").Trim() == "PONG"), "the new Redis answers");

            // The silos put the membership table back: their three rows are in the new Redis, Active.
            var rows = await Poll.UntilAsync(() => Task.FromResult(Rows(redisPort, table)), r => r.Count(x => x.Value == Active) == 3);
            Assert.Equal(3, rows.Count(r => r.Value == Active));

            // The stream that was running finishes with every token.
            await reading.WaitAsync(TimeSpan.FromMinutes(5));
            Assert.Equal("length", finish);
            Assert.Equal(maxTokens, completionTokens);

            // A new request is served.
            using (var fresh = await http.PostAsJsonAsync("/v1/completions", new JsonObject { ["prompt"] = "after the restart", ["max_tokens"] = 8, ["temperature"] = 0, ["ignore_eos"] = true }))
            {
                var text = await fresh.Content.ReadAsStringAsync();
                Assert.True(fresh.StatusCode == HttpStatusCode.OK, text);
                Assert.Equal(8, JsonNode.Parse(text)!["usage"]!["completion_tokens"]!.GetValue<int>());
            }

            // A silo started now (a replica of expert group 2) joins the cluster through the restored table.
            var silo = Path.Combine(LoopbackClusterTests.RepoRoot(), "silos", "bin", BuildConfig, "net10.0", "grid-silo.dll");
            var launch = $"OMP_WAIT_POLICY=PASSIVE Grid__Cluster__ClusterId={clusterId} nohup dotnet '{silo}' --torch-threads 1 --model '{Golden.Dir("full_f32")}' " +
                $"--groups 2 --expert-groups 4 --attention false --clustering redis --redis 127.0.0.1:{redisPort} --silo-port {basePort + 3} " +
                $"--gateway-port {basePort + 103} --metrics-port 0 > '{Path.Combine(state, "silo3.log")}' 2>&1 & echo $! > '{Path.Combine(state, "silo3.pid")}'";
            (code, output) = Run("bash", ["-c", launch]);
            Assert.True(code == 0, output);
            rows = await Poll.UntilAsync(() => Task.FromResult(Rows(redisPort, table)), r => r.Count(x => x.Value == Active) == 4);
            Assert.Equal(4, rows.Count(r => r.Value == Active));
            Assert.Contains(rows, r => r.Key.StartsWith($"S127.0.0.1:{basePort + 3}:", StringComparison.Ordinal) && r.Value == Active);

            // Nobody was declared dead on the way.
            Assert.DoesNotContain(rows, r => r.Value == 6);
        }
        finally
        {
            var (code, output) = Script(state, "down");
            Assert.True(code == 0, output);
        }
        Assert.Empty(Directory.GetFiles(state, "*.pid"));
    }
}
