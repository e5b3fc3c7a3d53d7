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

    const int MmapThresholdParameter = -3;   // glibc's M_MMAP_THRESHOLD

    /// <summary>
    /// Serves heap blocks of at least <paramref name="bytes"/> with their own mappings, returned to the OS when freed
    /// (glibc's <c>mallopt(M_MMAP_THRESHOLD)</c>, which also stops the threshold from rising). A weight load allocates
    /// and frees a float copy of every tensor between the long-lived 8-bit matrices; from the arenas those frees left
    /// gigabytes of resident holes on a full-size model. A no-op off glibc.
    /// </summary>
    public static void MapLargeBlocks(int bytes)
    {
        if (_unavailable) return;
        try { MallOpt(MmapThresholdParameter, bytes); }
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
