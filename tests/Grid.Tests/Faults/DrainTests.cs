using System.Diagnostics;
using System.Net;
using Xunit;
using Xunit.Abstractions;
using static Grid.Tests.Faults.FaultKit;

namespace Grid.Tests.Faults;

/// <summary>
/// Graceful drain: SIGTERM to a serving `grid serve` process during 8 streams. /ready turns 503 and new requests get
/// 503 at once, while every running stream finishes with its full output; then the process exits by itself.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class DrainTests(ITestOutputHelper output)
{
    [Fact]
    public async Task SigtermLetsRunningStreamsFinishAndRefusesNewOnes()
    {
        int port = Grid.Configuration.GridClusterOptions.FreePort();
        var root = Grid.Tests.Cluster.LoopbackClusterTests.RepoRoot();
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        var log = Path.Combine(ModelTestKit.TempDir("drain"), "serve.log");
        var psi = new ProcessStartInfo("bash") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"exec dotnet '{root}/gateway/bin/{config}/net10.0/grid.dll' serve --model '{Model}' --port {port} --drain-seconds 600 > '{log}' 2>&1");
        psi.Environment["Grid__Http__DebugEndpoints"] = "true";
        using var serve = Process.Start(psi)!;
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromMinutes(5) };
            await Poll.UntilAsync(async () =>
            {
                if (serve.HasExited) throw new InvalidOperationException("grid serve exited: " + File.ReadAllText(log));
                try { return (await http.GetAsync("/ready")).IsSuccessStatusCode; } catch (HttpRequestException) { return false; }
            }, "grid serve did not become ready");

            var specs = Specs(8, 120, seeded: false);
            var streams = StreamClient.StartAll(http, specs);
            await StreamClient.WaitAllTokensAsync(streams, 3, StateLimit);
            using (var kill = Process.Start("kill", ["-TERM", serve.Id.ToString()])) await kill.WaitForExitAsync();

            // Draining: not ready, and a new request is refused with 503 (while the streams still run).
            await Poll.UntilAsync(async () => (await http.GetAsync("/ready")).StatusCode == HttpStatusCode.ServiceUnavailable, "/ready did not turn 503");
            using var late = await http.PostAsync("/v1/completions", new StringContent(
                """{"prompt": [5, 6, 7], "max_tokens": 4}""", System.Text.Encoding.UTF8, "application/json"));
            var body = await late.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.ServiceUnavailable, late.StatusCode);
            Assert.Contains("server_shutting_down", body);

            var runs = await Task.WhenAll(streams.Select(s => s.Completion));
            Assert.All(runs, r => Assert.True(r.Complete, r.Describe()));
            await serve.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
            Log(output, $"drained: {runs.Length} streams finished after SIGTERM; exit code {serve.ExitCode}");
        }
        finally
        {
            if (!serve.HasExited) serve.Kill(true);
        }
    }
}
