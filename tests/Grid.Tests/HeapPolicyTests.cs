using System.Runtime.InteropServices;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using Xunit;

namespace Grid.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HeapPolicyCollection
{
    public const string Name = "heap policy (glibc's process-wide malloc settings)";
}

/// <summary>
/// <see cref="HeapTrim.LoadScope"/>: during a weight load large C-heap blocks get their own mappings (handed back when
/// freed); afterwards a step's large intermediates come from the arenas again instead of faulting in fresh zeroed pages
/// every time. Observed through glibc's own count of individually mapped blocks (<c>mallinfo2().hblks</c>), with no other
/// test running (the settings and the count are process-wide).
/// </summary>
[Collection(HeapPolicyCollection.Name)]
public sealed unsafe partial class HeapPolicyTests
{
    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2
    {
        public nuint Arena, OrdBlks, SmBlks, HBlks, HBlkHd, UsmBlks, FsmBlks, UordBlks, FordBlks, KeepCost;
    }

    [LibraryImport("libc", EntryPoint = "mallinfo2")]
    private static partial MallInfo2 MallInfo();

    /// <summary>Whether a fresh 24 MiB malloc block (under the serving threshold, above the load one) is mapped on its own (the count of mapped blocks grows while it lives).</summary>
    static bool LargeBlockGetsItsOwnMapping()
    {
        nuint before = MallInfo().HBlks;
        void* block = NativeMemory.Alloc(24 << 20);
        try
        {
            ((byte*)block)[0] = 1;
            return MallInfo().HBlks > before;
        }
        finally { NativeMemory.Free(block); }
    }

    [Fact]
    public void LoadsMapLargeBlocksAndServingTakesThemFromTheArenas()
    {
        Assert.True(OperatingSystem.IsLinux(), "these settings are glibc's");
        using (var model = DeepseekV2Model.Load(Golden.Dir("lite_f32")))
        {
            Assert.False(HeapTrim.Loading);
            Assert.False(LargeBlockGetsItsOwnMapping());
        }
        // (Whether a block is mapped during a load also depends on the free chunks earlier tests left in the arenas,
        // which glibc uses first, so only the policy is checked there.)
        using (HeapTrim.LoadScope())
        {
            Assert.True(HeapTrim.Loading);
            using (HeapTrim.LoadScope())   // overlapping loads: the policy stays until the last one ends
            {
            }
            Assert.True(HeapTrim.Loading);
        }
        Assert.False(HeapTrim.Loading);
        Assert.False(LargeBlockGetsItsOwnMapping());
    }

    [Fact]
    public void AFailedLoadRestoresTheServingPolicy()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() =>
            DeepseekV2Model.Load(Golden.Dir("lite_f32"), new ModelLoadOptions { Cancellation = cancelled.Token }));
        Assert.False(HeapTrim.Loading);
        Assert.False(LargeBlockGetsItsOwnMapping());
    }
}
