using System.Diagnostics;

namespace Grid.ModelCore.Cache;

/// <summary>
/// How many bytes of latent cache a host may hold. An explicit byte count wins; otherwise, like vLLM's
/// <c>gpu_memory_utilization</c>, a fraction of the host's memory (the container's limit where there is one)
/// that this process may use in all: the cache gets what is left of it once the weights are resident, and never
/// more than that fraction of the memory actually available now (other processes on the host keep theirs).
/// The pools grow to the budget on demand and give memory back as they empty (<see cref="LatentCache.Trim"/>).
/// </summary>
public static class CacheBudget
{
    /// <summary>The default fraction of host memory one process may use (vLLM's default for GPU memory).</summary>
    public const double DefaultMemoryUtilization = 0.9;

    /// <summary>A budget never goes below this, however little memory is left (the host then fails by preempting, not by crashing).</summary>
    public const long MinimumBytes = 1L << 20;

    /// <summary>The memory this process sees: the container limit if any (the GC reads cgroups), else the machine's.</summary>
    public static long HostMemoryBytes => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>Resident bytes of this process now.</summary>
    public static long ResidentBytes
    {
        get { using var p = Process.GetCurrentProcess(); return p.WorkingSet64; }
    }

    /// <summary>Memory the kernel could hand out now without swapping (<c>MemAvailable</c>); null where /proc/meminfo is absent.</summary>
    public static long? AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[1]) * 1024;
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>
    /// The cache budget in bytes: <paramref name="maxBytes"/> when given, else
    /// <c>min(utilization × host − resident, utilization × available)</c>, at least <see cref="MinimumBytes"/>.
    /// Call it once the weights are loaded. <paramref name="reason"/> says how it was chosen, for the log.
    /// </summary>
    public static long Resolve(long? maxBytes, double memoryUtilization, out string reason)
    {
        if (maxBytes is long fixedBytes)
        {
            reason = $"{fixedBytes >> 20} MiB (Grid:Silo:CacheMaxBytes)";
            return fixedBytes;
        }
        if (!(memoryUtilization > 0 && memoryUtilization <= 1))
            throw new ArgumentOutOfRangeException(nameof(memoryUtilization), memoryUtilization, "the memory utilization is a fraction in (0, 1]");
        long host = HostMemoryBytes, resident = ResidentBytes;
        long available = AvailableBytes() ?? Math.Max(0, host - resident);
        long share = (long)(memoryUtilization * host) - resident;
        long now = (long)(memoryUtilization * Math.Min(available, host));
        long budget = Math.Max(MinimumBytes, Math.Min(share, now));
        reason = $"{budget >> 20} MiB = min({memoryUtilization:0.##} x {host >> 20} MiB host - {resident >> 20} MiB resident, " +
                 $"{memoryUtilization:0.##} x {available >> 20} MiB available) (Grid:Silo:MemoryUtilization)";
        return budget;
    }
}
