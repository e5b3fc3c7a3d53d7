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

    /// <summary>Returns free heap pages to the OS where the C library can (glibc's <c>malloc_trim(0)</c>).</summary>
    public static void Return()
    {
        if (_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { _unavailable = true; }
    }
}
