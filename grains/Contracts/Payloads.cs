using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.Grains.Contracts;

/// <summary>
/// A [Rows, Cols] tensor as raw bytes in the compute dtype. Immutable: Orleans passes it by reference on local
/// calls instead of deep-copying the array.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record TensorPayload(
    [property: Id(0)] int Rows,
    [property: Id(1)] int Cols,
    [property: Id(2)] ScalarType Dtype,
    [property: Id(3)] byte[] Data)
{
    public static TensorPayload From(Tensor t) =>
        new((int)t.shape[0], (int)t.shape[1], t.dtype, TensorBytes.ToBytes(t));

    public Tensor ToTensor() => TensorBytes.FromBytes(Data, Dtype, Rows, Cols);

    int RowBytes => Cols * TensorBytes.ElementSize(Dtype);

    /// <summary>The given rows, in order, as a new payload.</summary>
    public TensorPayload SelectRows(IReadOnlyList<int> rows)
    {
        var data = new byte[rows.Count * RowBytes];
        for (int i = 0; i < rows.Count; i++)
            Data.AsSpan(rows[i] * RowBytes, RowBytes).CopyTo(data.AsSpan(i * RowBytes));
        return new TensorPayload(rows.Count, Cols, Dtype, data);
    }

    /// <summary>Rows [start, start + count) as a new payload.</summary>
    public TensorPayload Slice(int start, int count) =>
        new(count, Cols, Dtype, Data.AsSpan(start * RowBytes, count * RowBytes).ToArray());

    public static TensorPayload Concat(IReadOnlyList<TensorPayload> parts)
    {
        if (parts.Count == 1) return parts[0];
        var data = new byte[parts.Sum(p => p.Data.Length)];
        int at = 0;
        foreach (var p in parts) { p.Data.CopyTo(data, at); at += p.Data.Length; }
        return new TensorPayload(parts.Sum(p => p.Rows), parts[0].Cols, parts[0].Dtype, data);
    }

    /// <summary>Values as float32 (widening 16-bit dtypes).</summary>
    public float[] ToFloats()
    {
        var n = Rows * Cols;
        var values = new float[n];
        switch (Dtype)
        {
            case ScalarType.Float32:
                Buffer.BlockCopy(Data, 0, values, 0, Data.Length);
                break;
            case ScalarType.BFloat16:
                for (int i = 0; i < n; i++) values[i] = BitConverter.UInt32BitsToSingle((uint)BitConverter.ToUInt16(Data, 2 * i) << 16);
                break;
            case ScalarType.Float16:
                for (int i = 0; i < n; i++) values[i] = (float)BitConverter.ToHalf(Data, 2 * i);
                break;
            default:
                throw new NotSupportedException($"payload dtype {Dtype}");
        }
        return values;
    }

    public static TensorPayload FromFloats(float[] values, int rows, int cols, ScalarType dtype)
    {
        var size = TensorBytes.ElementSize(dtype);
        var data = new byte[values.Length * size];
        switch (dtype)
        {
            case ScalarType.Float32:
                Buffer.BlockCopy(values, 0, data, 0, data.Length);
                break;
            case ScalarType.BFloat16:
                for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(data.AsSpan(2 * i), Grid.ModelCore.Weights.SafetensorsWriter.ToBFloat16(values[i]));
                break;
            case ScalarType.Float16:
                for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(data.AsSpan(2 * i), (Half)values[i]);
                break;
            default:
                throw new NotSupportedException($"payload dtype {dtype}");
        }
        return new TensorPayload(rows, cols, dtype, data);
    }
}
