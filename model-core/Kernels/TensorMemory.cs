using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// The address of a contiguous CPU tensor's data, for the C# kernels. The memory belongs to libtorch and does not
/// move while the tensor lives; only the inference thread may create or dispose the tensor, but kernel worker
/// threads may read and write the memory in between.
/// </summary>
public static unsafe class TensorMemory
{
    /// <summary>Pointer to the first element of <paramref name="t"/> (contiguous, CPU, non-empty).</summary>
    public static T* Pointer<T>(Tensor t) where T : unmanaged
    {
        if (!t.is_contiguous()) throw new ArgumentException("the kernels need a contiguous tensor", nameof(t));
        var bytes = t.bytes;
        if (bytes.IsEmpty) throw new ArgumentException("the kernels need a non-empty tensor", nameof(t));
        return (T*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(bytes));
    }
}
