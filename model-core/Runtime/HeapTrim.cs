using System.Runtime.InteropServices;

namespace Grid.ModelCore.Runtime;

/// <summary>
/// Hands freed native heap memory back to the operating system. libtorch's CPU allocator takes large buffers from
/// glibc's malloc, which keeps freed memory in its arenas (its mmap threshold rises after the first large free), so a
/// freed latent-cache pool would stay in the process's resident memory without <c>malloc_trim</c>. A no-op off glibc.
/// </summary>
public static partial class HeapTrim
{
    static bool _unavailable = !OperatingSystem.IsLinux();

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int MallOpt(int parameter, int value);

    const int TrimThresholdParameter = -1;   // glibc's M_TRIM_THRESHOLD
    const int MmapThresholdParameter = -3;   // glibc's M_MMAP_THRESHOLD

    /// <summary>While a weight load runs: blocks of at least this many bytes get their own mappings.</summary>
    public const int LoadMmapThreshold = 1 << 20;
    /// <summary>While serving: blocks below this (glibc's largest allowed threshold on 64-bit) come from the arenas.</summary>
    public const int ServeMmapThreshold = 32 << 20;
    /// <summary>While serving: free memory at the top of a heap is kept up to this size instead of being handed back.</summary>
    public const int ServeTrimThreshold = 512 << 20;

    static readonly Lock s_gate = new();
    static int s_loads;

    /// <summary>The allocation policy now in force: true while at least one weight load runs.</summary>
    public static bool Loading { get { lock (s_gate) return s_loads > 0; } }

    /// <summary>
    /// The heap policy for a weight load, until disposed (loads may overlap; the last one to finish restores serving).
    /// A load allocates and frees a float copy of every tensor between the long-lived weights; served from the arenas,
    /// those frees left gigabytes of resident holes on a full-size model, so during a load every block of 1 MiB or more
    /// gets its own mapping, returned to the OS when freed. Serving is the opposite case: a step's intermediates (scores,
    /// projections, expert activations: 1-30 MiB at a 512-token prefill) are freed and allocated again every layer, and
    /// with their own mappings each one is a fresh mmap whose pages fault in zeroed on first touch (measured on a
    /// 256-token prefill of the benchmark model: 60,000-84,000 minor faults and 1.5-2.2x the CPU time, against about
    /// 5,000 with the serving policy). So after the load, blocks up to
    /// 32 MiB come from the arenas again and up to 512 MiB of free heap top stays mapped; <see cref="Return"/> still
    /// hands free pages back when the latent cache shrinks. A no-op off glibc.
    /// </summary>
    public static IDisposable LoadScope()
    {
        lock (s_gate)
        {
            if (s_loads++ == 0)
            {
                MallOptIfAvailable(MmapThresholdParameter, LoadMmapThreshold);
                MallOptIfAvailable(TrimThresholdParameter, 128 << 10);   // glibc's default
                Return();   // what serving kept mapped: glibc takes a block from free heap memory before it maps one
            }
        }
        return new LoadPolicy();
    }

    sealed class LoadPolicy : IDisposable
    {
        int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            lock (s_gate)
            {
                if (--s_loads > 0) return;
                Return();   // the load's transient buffers
                MallOptIfAvailable(MmapThresholdParameter, ServeMmapThreshold);
                MallOptIfAvailable(TrimThresholdParameter, ServeTrimThreshold);
            }
        }
    }

    static void MallOptIfAvailable(int parameter, int value)
    {
        if (_unavailable) return;
        try { MallOpt(parameter, value); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { _unavailable = true; }
    }

    /// <summary>Returns free heap pages to the OS where the C library can (glibc's <c>malloc_trim(0)</c>).</summary>
    public static void Return()
    {
        if (_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { _unavailable = true; }
    }
}
