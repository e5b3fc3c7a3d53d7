using System.Diagnostics;
using Grid.Configuration;
using Microsoft.Extensions.Configuration;

namespace Grid.Benchmarks;

/// <summary>
/// The 3-silo loopback cluster of deploy/local/cluster.sh (Redis membership, one process per silo plus its gateway),
/// started with this program's build configuration and brought down on dispose or when this process exits.
/// </summary>
public sealed class LoopbackCluster : IAsyncDisposable
{
    readonly BenchContext _c;
    readonly string _state;
    readonly EventHandler _onExit;
    int _down;

    /// <summary>The cluster's Grid:Cluster settings (what a client needs), as cluster.sh wrote them.</summary>
    public GridClusterOptions Options { get; private set; } = new();

    LoopbackCluster(BenchContext c, string state)
    {
        _c = c;
        _state = state;
        _onExit = (_, _) => Down();
        AppDomain.CurrentDomain.ProcessExit += _onExit;
    }

    string Script => Path.Combine(_c.RepoRoot, "deploy", "local", "cluster.sh");

    public static async Task<LoopbackCluster> StartAsync(BenchContext c, int silos, CancellationToken ct)
    {
        var state = Path.Combine(Path.GetTempPath(), $"grid-bench-cluster-{Environment.ProcessId}");
        int port = GridClusterOptions.FreePort(), redis = GridClusterOptions.FreePort();
        int basePort = 22000 + Random.Shared.Next(0, 60) * 100;
        var cluster = new LoopbackCluster(c, state);
        c.Log($"cluster: up --silos {silos} ({c.BuildConfig} builds, state {state})");
        try
        {
            int rc = await cluster.RunScriptAsync(["up", "--silos", silos.ToString(), "--model", c.ModelDir, "--port", port.ToString(),
                "--redis-port", redis.ToString(), "--base-port", basePort.ToString(), "--no-build", "--timeout", "240"], ct);
            if (rc != 0) throw new InvalidOperationException($"cluster.sh up exited with {rc}; see {state}/*.log");
            // The env file holds the Grid__Cluster__* environment variables a client needs: bound and validated as the
            // Grid:* tree (the same keys, binding and validation as every Grid executable).
            var variables = File.ReadAllText(Path.Combine(state, "env")).Replace("export ", "")
                .Split([' ', '\n'], StringSplitOptions.RemoveEmptyEntries)
                .Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0].Replace("__", ":"), kv => (string?)kv[1]);
            var configuration = new ConfigurationBuilder().AddInMemoryCollection(variables).Build();
            cluster.Options = GridOptionsSetup.Load(configuration, GridExecutable.Benchmark).Cluster;
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    async Task<int> RunScriptAsync(string[] args, CancellationToken ct)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _c.RepoRoot };
        psi.ArgumentList.Add(Script);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["GRID_CLUSTER_DIR"] = _state;
        psi.Environment["GRID_BUILD_CONFIG"] = _c.BuildConfig;
        using var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data is { Length: > 0 }) _c.Log("cluster.sh: " + e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { Length: > 0 }) _c.Log("cluster.sh: " + e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        await p.WaitForExitAsync(ct);
        return p.ExitCode;
    }

    void Down()
    {
        if (Interlocked.Exchange(ref _down, 1) == 1) return;
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Script);
        psi.ArgumentList.Add("down");
        psi.Environment["GRID_CLUSTER_DIR"] = _state;
        using var p = Process.Start(psi)!;
        p.WaitForExit(30_000);
    }

    public ValueTask DisposeAsync()
    {
        _c.Log("cluster: down");
        Down();
        AppDomain.CurrentDomain.ProcessExit -= _onExit;
        return ValueTask.CompletedTask;
    }
}
