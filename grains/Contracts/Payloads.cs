namespace Grid.Grains.Contracts;

/// <summary>Element types a <see cref="TensorPayload"/> carries.</summary>
public enum PayloadDtype
{
    Float32 = 0,
    BFloat16 = 1,
    Float16 = 2,
}

/// <summary>
/// Who carries a MoE layer's hidden states between the attention shard and the expert groups
/// (<c>Grid:Cluster:ExpertExchange</c>).
/// </summary>
public enum ExpertExchange
{
    /// <summary>
    /// One gateway call per shard and MoE layer (<see cref="IAttentionGrain.ExchangeStepAsync"/>): the shard runs the
    /// layer's routed experts itself, the groups its silo holds in place and the others on their expert-group grains,
    /// folds their sum in and runs on to the next MoE layer. Hidden states never pass through the gateway.
    /// </summary>
    Shard = 0,
    /// <summary>
    /// The earlier walk, two round trips per MoE layer: the shard returns the layer's input to the gateway, the gateway
    /// calls the expert groups, sums and hands the sum back (<see cref="IAttentionGrain.ContinueStepAsync"/>).
    /// </summary>
    Gateway = 1,
}

/// <summary>
/// A [Rows, Cols] tensor as raw little-endian bytes in the compute dtype. Immutable: Orleans passes it by
/// reference on local calls instead of deep-copying the array. Tensors convert to and from it beside the grains.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record TensorPayload(
    [property: Id(0)] int Rows,
    [property: Id(1)] int Cols,
    [property: Id(2)] PayloadDtype Dtype,
    [property: Id(3)] byte[] Data)
{
    public static int ElementSize(PayloadDtype dtype) => dtype == PayloadDtype.Float32 ? 4 : 2;

    int RowBytes => Cols * ElementSize(Dtype);

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
            case PayloadDtype.Float32:
                Buffer.BlockCopy(Data, 0, values, 0, Data.Length);
                break;
            case PayloadDtype.BFloat16:
                for (int i = 0; i < n; i++) values[i] = BitConverter.UInt32BitsToSingle((uint)BitConverter.ToUInt16(Data, 2 * i) << 16);
                break;
            case PayloadDtype.Float16:
                for (int i = 0; i < n; i++) values[i] = (float)BitConverter.ToHalf(Data, 2 * i);
                break;
            default:
                throw new NotSupportedException($"payload dtype {Dtype}");
        }
        return values;
    }

    /// <summary>float32 values narrowed to <paramref name="dtype"/> (bf16 rounds to nearest even, as torch does).</summary>
    public static TensorPayload FromFloats(float[] values, int rows, int cols, PayloadDtype dtype)
    {
        var data = new byte[values.Length * ElementSize(dtype)];
        switch (dtype)
        {
            case PayloadDtype.Float32:
                Buffer.BlockCopy(values, 0, data, 0, data.Length);
                break;
            case PayloadDtype.BFloat16:
                for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(data.AsSpan(2 * i), ToBFloat16(values[i]));
                break;
            case PayloadDtype.Float16:
                for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(data.AsSpan(2 * i), (Half)values[i]);
                break;
            default:
                throw new NotSupportedException($"payload dtype {dtype}");
        }
        return new TensorPayload(rows, cols, dtype, data);
    }

    static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
