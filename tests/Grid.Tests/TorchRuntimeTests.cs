using System.Text;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests;

/// <summary>TorchSharp loads from a plain build on this host, patched only where the host needs it.</summary>
public class TorchRuntimeTests
{
    [Fact]
    public void TorchLoadsAndComputes()
    {
        using var a = ones(3, 4);
        using var b = ones(4, 2);
        using var c = a.matmul(b);
        Assert.Equal(new[] { 4f, 4f, 4f, 4f, 4f, 4f }, c.data<float>().ToArray());
    }

    [Fact]
    public void LibTorchSharpIsPatchedOnlyWhereTheHostNeedsIt()
    {
        var built = Directory.GetFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).Single();
        var home = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var original = Path.Combine(home, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(original), original);
        var a = File.ReadAllBytes(original);
        var b = File.ReadAllBytes(built);
        Assert.Equal(a.Length, b.Length);
        var differing = Enumerable.Range(0, a.Length).Where(i => a[i] != b[i]).ToArray();
        var libstdcxx = new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6" }.First(File.Exists);
        bool hostHasVersion = Encoding.ASCII.GetString(File.ReadAllBytes(libstdcxx)).Contains("GLIBCXX_3.4.32\0");
        if (hostHasVersion)
        {
            Assert.Empty(differing);
            return;
        }
        // Exactly one byte: the low byte of vna_flags of the GLIBCXX_3.4.32 entry (hash 0x0297f842), now VER_FLG_WEAK.
        var single = Assert.Single(differing);
        Assert.Equal(0, a[single] & 2);
        Assert.Equal(2, b[single] & 2);
        Assert.Equal(0x0297f842u, BitConverter.ToUInt32(b, single - 4));
    }
}
