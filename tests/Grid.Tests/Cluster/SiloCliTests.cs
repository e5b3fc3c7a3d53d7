using System.Diagnostics;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>The grid-silo host refuses bad configuration with one line and a non-zero exit, before joining anything.</summary>
public class SiloCliTests
{
    static (int Code, string Stderr) RunSilo(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        // The silo host's own build output (its dependencies differ from this web-SDK test folder's).
        var config = AppContext.BaseDirectory.Contains("/Release/") ? "Release" : "Debug";
        psi.ArgumentList.Add(Path.Combine(LoopbackClusterTests.RepoRoot(), "silos", "bin", config, "net10.0", "grid-silo.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(Poll.Deadline)) { p.Kill(true); throw new TimeoutException("grid-silo did not exit"); }
        return (p.ExitCode, stderr.Result);
    }

    [Theory]
    [InlineData(new[] { "--model", "/nonexistent/model" }, "Grid:Model:Path (--model): '/nonexistent/model' is not a folder")]
    [InlineData(new[] { "--device", "cuda:0" }, "Grid:Silo:Device: 'cuda:0' requested, but this build has no CUDA backend")]
    [InlineData(new[] { "--device", "tpu" }, "Grid:Silo:Device: 'tpu' is not a device (cpu or cuda:N)")]
    [InlineData(new[] { "--groups", "0,x" }, "error: ")]
    [InlineData(new[] { "--groups", "0,3", "--expert-groups", "2" }, "Grid:Silo:ExpertGroups: group 3 is outside 0..1 (Grid:Cluster:ExpertGroups is 2)")]
    [InlineData(new[] { "--groups", "2", "--group-count", "2" }, "Grid:Silo:ExpertGroups: group 2 is outside 0..1")]
    [InlineData(new[] { "--clustering", "zookeeper" }, "Grid:Cluster:Clustering: 'zookeeper' is not supported")]
    public void BadConfigurationIsOneLineAndExitCodeTwo(string[] args, string message)
    {
        var all = args.Contains("--model") ? args : ["--model", Golden.Dir("lite_f32"), .. args];
        var (code, stderr) = RunSilo(all);
        Assert.Equal(2, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains(message, lines[0]);
    }
}
