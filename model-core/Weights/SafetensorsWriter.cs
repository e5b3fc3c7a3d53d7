using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.ModelCore.Weights;

/// <summary>
/// Writes float tensors as a Hugging Face safetensors checkpoint: one <c>model.safetensors</c> or
/// <c>shards</c> files named <c>model-0000k-of-0000n.safetensors</c> with <c>model.safetensors.index.json</c>.
/// Values are converted to the storage dtype (BF16 and F16 round to nearest even).
/// </summary>
/// <summary>A tensor to write: its name, shape and a function that produces its float values when written.</summary>
public sealed record TensorData(string Name, long[] Shape, Func<float[]> Produce)
{
    /// <summary>Stores this tensor in another dtype than the file's (F8_E4M3 values are rounded to the nearest code).</summary>
    public StorageDtype? Dtype { get; init; }

    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

public static class SafetensorsWriter
{
    /// <param name="progress">Told the byte count of each tensor once it is written, in order, on the writing thread.</param>
    public static void Write(string directory, IReadOnlyList<TensorData> tensors, StorageDtype dtype, int shards = 1, IProgress<long>? progress = null)
    {
        if (shards < 1 || shards > Math.Max(1, tensors.Count)) throw new ArgumentOutOfRangeException(nameof(shards));
        System.IO.Directory.CreateDirectory(directory);
        if (shards == 1)
        {
            WriteFile(Path.Combine(directory, "model.safetensors"), tensors, dtype, progress);
            return;
        }
        // Contiguous runs of roughly equal byte size, in tensor order.
        long total = tensors.Sum(t => t.Elements);
        var weightMap = new JsonObject();
        long before = 0;
        var shardOf = new int[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            shardOf[i] = (int)Math.Min(shards - 1, before * shards / Math.Max(1, total));
            before += tensors[i].Elements;
        }
        for (int s = 0; s < shards; s++)
        {
            var name = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var part = tensors.Where((_, i) => shardOf[i] == s).ToList();
            WriteFile(Path.Combine(directory, name), part, dtype, progress);
            foreach (var t in part) weightMap[t.Name] = name;
        }
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = total * TensorEntry.ElementSize(dtype) },
            ["weight_map"] = weightMap,
        };
        File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static void WriteFile(string path, IReadOnlyList<TensorData> tensors, StorageDtype dtype, IProgress<long>? progress)
    {
        var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var t in tensors)
        {
            var (name, shape, _) = t;
            long bytes = shape.Aggregate(1L, (a, b) => a * b) * TensorEntry.ElementSize(t.Dtype ?? dtype);
            header[name] = new JsonObject
            {
                ["dtype"] = (t.Dtype ?? dtype).ToString(),
                ["shape"] = new JsonArray(shape.Select(x => (JsonNode)x).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - headerBytes.Length % 8) % 8; // keep the data 8-byte aligned, padded with spaces as the reference writer does
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using var w = new BinaryWriter(stream);
        w.Write((long)(headerBytes.Length + pad));
        w.Write(headerBytes);
        for (int i = 0; i < pad; i++) w.Write((byte)' ');
        // The next tensor is produced and encoded on the thread pool while this one is written (chunks of each
        // tensor encode in parallel); at most two tensors are in memory at once. The bytes do not depend on the threads.
        Task<byte[]>? next = tensors.Count > 0 ? Task.Run(() => Encoded(tensors[0], dtype)) : null;
        for (int i = 0; i < tensors.Count; i++)
        {
            var bytes = next!.GetAwaiter().GetResult();
            int following = i + 1;
            next = following < tensors.Count ? Task.Run(() => Encoded(tensors[following], dtype)) : null;
            w.Write(bytes);
            progress?.Report(bytes.LongLength);
        }
    }

    const int EncodeChunk = 1 << 20;

    static byte[] Encoded(TensorData t, StorageDtype fileDtype)
    {
        var data = t.Produce();
        var tensorDtype = t.Dtype ?? fileDtype;
        int size = TensorEntry.ElementSize(tensorDtype);
        if (data.LongLength != t.Elements) throw new InvalidOperationException($"tensor '{t.Name}' produced {data.LongLength} values for shape [{string.Join(", ", t.Shape)}]");
        var bytes = new byte[data.LongLength * size];
        int chunks = (int)((data.LongLength + EncodeChunk - 1) / EncodeChunk);
        Parallel.For(0, chunks, c =>
        {
            int from = c * EncodeChunk, to = (int)Math.Min(data.LongLength, (long)from + EncodeChunk);
            for (int j = from; j < to; j++) Encode(data[j], tensorDtype, bytes, j * size);
        });
        return bytes;
    }

    static void Encode(float value, StorageDtype dtype, byte[] buffer, int at)
    {
        switch (dtype)
        {
            case StorageDtype.F32:
                BitConverter.TryWriteBytes(buffer.AsSpan(at, 4), value);
                break;
            case StorageDtype.F8_E4M3:
                buffer[at] = Kernels.Fp8E4M3.Encode(value);
                break;
            case StorageDtype.F16:
                BitConverter.TryWriteBytes(buffer.AsSpan(at, 2), (Half)value);
                break;
            default:
                BitConverter.TryWriteBytes(buffer.AsSpan(at, 2), ToBFloat16(value));
                break;
        }
    }

    /// <summary>float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).</summary>
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    public static float FromBFloat16(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);
}
