using System.Text;

namespace Grid.Benchmarks;

/// <summary>
/// A minimal GGUF v3 writer (the file format llama.cpp loads): header, typed metadata key/values, tensor infos,
/// then the tensor data, each tensor aligned to <see cref="Alignment"/> bytes. Only float32 tensors are written.
/// Tensor data is produced lazily, one tensor at a time, so a multi-gigabyte file never sits in memory.
/// Dimensions are given in row-major (PyTorch) order; GGUF stores them innermost first, which this writer does.
/// </summary>
public sealed class GgufWriter
{
    public const int Alignment = 32;
    const uint Magic = 0x46554747; // "GGUF" little-endian
    const uint Version = 3;

    enum ValueType : uint { UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12 }
    const uint GgmlTypeF32 = 0;

    readonly List<(string Key, Action<BinaryWriter> Write)> _metadata = new();
    readonly List<(string Name, long[] Shape, Func<float[]> Data)> _tensors = new();

    public void Add(string key, uint value) => _metadata.Add((key, w => { w.Write((uint)ValueType.UInt32); w.Write(value); }));
    public void Add(string key, int value) => _metadata.Add((key, w => { w.Write((uint)ValueType.Int32); w.Write(value); }));
    public void Add(string key, float value) => _metadata.Add((key, w => { w.Write((uint)ValueType.Float32); w.Write(value); }));
    public void Add(string key, bool value) => _metadata.Add((key, w => { w.Write((uint)ValueType.Bool); w.Write((byte)(value ? 1 : 0)); }));
    public void Add(string key, string value) => _metadata.Add((key, w => { w.Write((uint)ValueType.String); WriteString(w, value); }));

    public void Add(string key, IReadOnlyList<string> values) => _metadata.Add((key, w =>
    {
        w.Write((uint)ValueType.Array);
        w.Write((uint)ValueType.String);
        w.Write((ulong)values.Count);
        foreach (var v in values) WriteString(w, v);
    }));

    public void Add(string key, IReadOnlyList<int> values) => _metadata.Add((key, w =>
    {
        w.Write((uint)ValueType.Array);
        w.Write((uint)ValueType.Int32);
        w.Write((ulong)values.Count);
        foreach (var v in values) w.Write(v);
    }));

    /// <summary>A float32 tensor of row-major <paramref name="shape"/>; <paramref name="data"/> runs when the file is written.</summary>
    public void AddTensor(string name, long[] shape, Func<float[]> data) => _tensors.Add((name, shape, data));

    public IReadOnlyList<string> TensorNames => _tensors.Select(t => t.Name).ToList();

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static long Elements(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);
    static long Align(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    /// <summary>Writes the file (to a temporary name first, then moved into place).</summary>
    public void Write(string path, Action<string>? log = null)
    {
        var tmp = path + ".tmp";
        using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        using (var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true))
        {
            w.Write(Magic);
            w.Write(Version);
            w.Write((ulong)_tensors.Count);
            w.Write((ulong)_metadata.Count);
            foreach (var (key, write) in _metadata)
            {
                WriteString(w, key);
                write(w);
            }
            long offset = 0;
            foreach (var (name, shape, _) in _tensors)
            {
                WriteString(w, name);
                w.Write((uint)shape.Length);
                for (int d = shape.Length - 1; d >= 0; d--) w.Write((ulong)shape[d]); // ne[0] is the innermost dimension
                w.Write(GgmlTypeF32);
                w.Write((ulong)offset);
                offset = Align(offset + Elements(shape) * sizeof(float));
            }
            w.Flush();
            Pad(stream);
            long dataStart = stream.Position;
            int done = 0;
            foreach (var (name, shape, data) in _tensors)
            {
                var values = data();
                if (values.Length != Elements(shape))
                    throw new InvalidOperationException($"GGUF tensor {name}: {values.Length} values for shape [{string.Join(", ", shape)}]");
                w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
                w.Flush();
                Pad(stream);
                if (++done % 50 == 0) log?.Invoke($"gguf: {done}/{_tensors.Count} tensors, {(stream.Position - dataStart) / 1e9:F2} GB");
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    static void Pad(Stream stream)
    {
        long pad = Align(stream.Position) - stream.Position;
        for (long i = 0; i < pad; i++) stream.WriteByte(0);
    }
}
