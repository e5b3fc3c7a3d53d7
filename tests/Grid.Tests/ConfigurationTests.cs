using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.Configuration;
using Microsoft.Extensions.Configuration;
using Xunit;

namespace Grid.Tests;

/// <summary>The one Grid:* options tree: binding, validation messages, the flag table and its documentation.</summary>
public class ConfigurationTests
{
    static GridOptions Load(GridExecutable executable, params (string Key, string? Value)[] settings) =>
        GridOptionsSetup.Load(new ConfigurationBuilder().AddInMemoryCollection(settings.ToDictionary(s => s.Key, s => s.Value)).Build(), executable);

    static string SiloModel => Golden.Dir("lite_f32");

    [Fact]
    public void DefaultsAreValidForEveryExecutable()
    {
        foreach (var executable in new[] { GridExecutable.Serve, GridExecutable.Generate, GridExecutable.Benchmark })
        {
            var o = Load(executable);
            Assert.Equal(8080, o.Http.Port);
            Assert.Equal("embedded", o.Cluster.Clustering);
            Assert.Equal(1, o.Cluster.ExpertGroups);
        }
        var silo = Load(GridExecutable.Silo, ("Grid:Model:Path", SiloModel));
        Assert.Equal("localhost", silo.Cluster.Clustering);   // a silo joins a cluster: embedded means localhost membership
        Assert.Empty(silo.Silo.ExpertGroups);
    }

    [Theory]
    [InlineData(GridExecutable.Serve, "Grid:Http:Port", "70000", "Grid:Http:Port must be between 0 and 65535, got 70000")]
    [InlineData(GridExecutable.Serve, "Grid:Http:Host", "example.org", "Grid:Http:Host: 'example.org' is not an IP address")]
    [InlineData(GridExecutable.Serve, "Grid:Http:MaxRequestBodyBytes", "10", "Grid:Http:MaxRequestBodyBytes must be at least 1024, got 10")]
    [InlineData(GridExecutable.Serve, "Grid:Model:Dtype", "int3", "Grid:Model:Dtype: 'int3' is not supported")]
    [InlineData(GridExecutable.Generate, "Grid:Model:Engine", "gpu", "Grid:Model:Engine: 'gpu' is not supported (grid, local)")]
    [InlineData(GridExecutable.Generate, "Grid:Scheduler:MaxBatchedTokens", "0", "Grid:Scheduler:MaxBatchedTokens must be at least 1, got 0")]
    [InlineData(GridExecutable.Benchmark, "Grid:Cluster:Clustering", "zookeeper", "Grid:Cluster:Clustering: 'zookeeper' is not supported")]
    [InlineData(GridExecutable.Benchmark, "Grid:Cluster:ExpertGroups", "0", "Grid:Cluster:ExpertGroups must be at least 1, got 0")]
    [InlineData(GridExecutable.Serve, "Grid:Http:Port", "abc", "'Grid:Http:Port'")]
    [InlineData(GridExecutable.Serve, "Grid:Silo:MemoryUtilization", "1.5", "Grid:Silo:MemoryUtilization (--memory-utilization) must be a fraction in (0, 1], got 1.5")]
    [InlineData(GridExecutable.Generate, "Grid:Silo:MemoryUtilization", "0", "must be a fraction in (0, 1], got 0")]
    [InlineData(GridExecutable.Serve, "Grid:Silo:CacheMaxBytes", "1000", "Grid:Silo:CacheMaxBytes must be at least 1048576, got 1000")]
    [InlineData(GridExecutable.Serve, "Grid:Model:Quantization", "int4", "Grid:Model:Quantization (--quantization): 'int4' is not supported (none, int8, fp8)")]
    [InlineData(GridExecutable.Generate, "Grid:Silo:KvCacheDtype", "fp16", "Grid:Silo:KvCacheDtype (--kv-cache-dtype): 'fp16' is not supported (auto, int8, fp8)")]
    public void BadValuesGiveOneLineThatNamesTheKey(GridExecutable executable, string key, string value, string message)
    {
        var e = Assert.Throws<GridConfigurationException>(() => Load(executable, (key, value)));
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void SiloGroupsAreCheckedAgainstTheOneExpertGroupCount()
    {
        var ok = Load(GridExecutable.Silo, ("Grid:Model:Path", SiloModel), ("Grid:Cluster:ExpertGroups", "4"), ("Grid:Silo:ExpertGroups", "0, 3"));
        Assert.Equal([0, 3], ok.Silo.ExpertGroups.ToArray());
        Assert.True(ok.Silo.ExpertGroups.Contains(3));
        var e = Assert.Throws<GridConfigurationException>(() =>
            Load(GridExecutable.Silo, ("Grid:Model:Path", SiloModel), ("Grid:Cluster:ExpertGroups", "2"), ("Grid:Silo:ExpertGroups", "0,2")));
        Assert.Contains("Grid:Silo:ExpertGroups: group 2 is outside 0..1 (Grid:Cluster:ExpertGroups is 2)", e.Message);
        var bad = Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, ("Grid:Model:Path", SiloModel), ("Grid:Silo:ExpertGroups", "0,x")));
        Assert.Contains("Grid:Silo:ExpertGroups", bad.Message);
        // The attention-only pods of deploy/k8s set it empty.
        Assert.Empty(Load(GridExecutable.Silo, ("Grid:Model:Path", SiloModel), ("Grid:Silo:ExpertGroups", "")).Silo.ExpertGroups);
    }

    [Fact]
    public void EachExecutableValidatesOnlyTheSectionsItReads()
    {
        // deploy/k8s shares one config map between silos and the gateway.
        Assert.Equal("tpu", Load(GridExecutable.Serve, ("Grid:Silo:Device", "tpu")).Silo.Device);
        Assert.Equal(70000, Load(GridExecutable.Generate, ("Grid:Http:Port", "70000")).Http.Port);
        var e = Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, ("Grid:Model:Path", "/nonexistent/model")));
        Assert.Contains("Grid:Model:Path (--model): '/nonexistent/model' is not a folder", e.Message);
    }

    [Fact]
    public void FlagsMapToKeysOfTheTree()
    {
        var keys = GridKeys.All().Select(k => k.Key).ToHashSet();
        Assert.All(GridFlags.All, f => Assert.Contains(f.Key, keys));
        Assert.Equal(GridFlags.All.Count, GridFlags.All.Select(f => f.Name).Distinct().Count());
        Assert.Equal(GridFlags.All.Count, GridFlags.All.Select(f => f.Key).Distinct().Count());
        var silo = GridFlags.SwitchMappings(GridExecutable.Silo);
        Assert.Equal("Grid:Cluster:ExpertGroups", silo["--expert-groups"]);
        Assert.Equal("Grid:Cluster:ExpertGroups", silo["--group-count"]);
        Assert.Equal("Grid:Model:Path", silo["--model"]);
        Assert.DoesNotContain("--port", silo.Keys);
    }

    [Fact]
    public void DocsListEveryKeyAndFlag()
    {
        var doc = File.ReadAllText(Path.Combine(Cluster.LoopbackClusterTests.RepoRoot(), "docs", "configuration.md"));
        Assert.All(GridKeys.All(), k => Assert.Contains($"| `{k.Key}` |", doc));
        Assert.All(GridFlags.All, f => Assert.Contains($"`{f.Name}`", doc));
        Assert.All(GridFlags.Aliases.Keys, a => Assert.Contains($"`{a}`", doc));
    }

    static (int Code, string Stdout, string Stderr) RunGrid(Dictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "grid.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("grid did not exit"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void GenerateReadsEnvironmentVariablesAndFlagsWinLikeServe()
    {
        string[] args = ["generate", "--prompt-ids", "1,2", "--max-tokens", "1", "--ignore-eos", "--json"];
        var env = new Dictionary<string, string> { ["Grid__Model__Path"] = Golden.Dir("lite_f32"), ["Grid__Model__Engine"] = "local" };
        var (code, stdout, stderr) = RunGrid(env, args);
        Assert.True(code == 0, stderr);
        Assert.Equal("lite_f32", JsonNode.Parse(stdout)!["model"]!.GetValue<string>());

        env["Grid__Model__Path"] = "/nonexistent";
        (code, stdout, stderr) = RunGrid(env, [.. args, "--model", Golden.Dir("lite_f32"), "--served-model-name", "named"]);
        Assert.True(code == 0, stderr);
        Assert.Equal("named", JsonNode.Parse(stdout)!["model"]!.GetValue<string>());

        env["Grid__Scheduler__MaxBatchedTokens"] = "0";
        (code, _, stderr) = RunGrid(env, [.. args, "--model", Golden.Dir("lite_f32")]);
        Assert.Equal(2, code);
        Assert.Equal("error: Grid:Scheduler:MaxBatchedTokens must be at least 1, got 0", stderr.Trim());
    }
}
