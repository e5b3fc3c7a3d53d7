using System.Diagnostics;
using System.Net;
using Xunit;
using Xunit.Abstractions;
using Grid.Tests.Load;
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
        await using var serve = await ServeProcess.StartAsync(Model, new Dictionary<string, string> { ["Grid:Http:DrainSeconds"] = "600" }, "drain");
        var http = serve.Http;
        var specs = Specs(8, 120, seeded: false);
        var streams = StreamClient.StartAll(http, specs);
        await StreamClient.WaitAllTokensAsync(streams, 3, StateLimit);
        using (var kill = Process.Start("kill", ["-TERM", serve.Pid.ToString()])) await kill.WaitForExitAsync();

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
}
