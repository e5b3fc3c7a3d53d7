using static TorchSharp.torch;

namespace Grid.ModelCore.Runtime;

/// <summary>Raw little-endian bytes of a contiguous CPU tensor, and back: the wire form of hidden states.</summary>
public static class TensorBytes
{
    public static byte[] ToBytes(Tensor t)
    {
        using var c = t.contiguous();
        return c.bytes.ToArray();
    }

    public static Tensor FromBytes(byte[] data, ScalarType dtype, long rows, long cols)
    {
        var t = empty([rows, cols], dtype);
        data.AsSpan().CopyTo(t.bytes);
        return t;
    }

    public static int ElementSize(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => 4,
        ScalarType.Float64 => 8,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        _ => throw new ArgumentException($"no wire form for {dtype}"),
    };
}
