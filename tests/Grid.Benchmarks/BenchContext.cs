using System.Diagnostics;
using Grid.ModelCore.Model;

namespace Grid.Benchmarks;

/// <summary>What every section shares: the run options, the mid checkpoint, the repository and a progress log.</summary>
public sealed class BenchContext : IDisposable
{
    DeepseekV2Model? _model;

    public required bool Quick { get; init; }
    public required string ModelDir { get; init; }
    public required string RepoRoot { get; init; }
    /// <summary>Debug or Release: the configuration this program was built in (the silos and gateway are built alongside).</summary>
    public required string BuildConfig { get; init; }
    public required Action<string> Log { get; init; }
    /// <summary>The plain float32 matmul GFLOP/s of this run, once the kernel section measured it.</summary>
    public double? MatmulGflops { get; set; }

    /// <summary>The mid model in this process, loaded on first use (the in-process sections share it).</summary>
    public DeepseekV2Model Model
    {
        get
        {
            if (_model is not null) return _model;
            var sw = Stopwatch.StartNew();
            _model = DeepseekV2Model.Load(ModelDir);
            Log($"loaded the mid model in {sw.Elapsed.TotalSeconds:F1} s");
            return _model;
        }
    }

    /// <summary>Frees the in-process model before sections that load their own copies.</summary>
    public void ReleaseModel()
    {
        _model?.Dispose();
        _model = null;
    }

    public static string FindRepoRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Grid.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("Grid.sln not found above the current directory or " + AppContext.BaseDirectory);
    }

    public static string OwnBuildConfig() =>
        AppContext.BaseDirectory.Split(Path.DirectorySeparatorChar).Contains("Release") ? "Release" : "Debug";

    public void Dispose() => ReleaseModel();
}
