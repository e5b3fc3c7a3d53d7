using System.IO.MemoryMappedFiles;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.ModelCore.Weights;

/// <summary>The storage dtypes Grid reads and writes (F8_E4M3: FP8 linear weights with block scales, as DeepSeek-V3 ships them).</summary>
public enum StorageDtype { F32, F16, BF16, F8_E4M3 }

/// <summary>Where one tensor lives in a safetensors file.</summary>
public sealed record TensorEntry(string Name, StorageDtype Dtype, long[] Shape, long Begin, long End, string File)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public static int ElementSize(StorageDtype d) => d switch { StorageDtype.F32 => 4, StorageDtype.F8_E4M3 => 1, _ => 2 };
}

/// <summary>
/// One memory-mapped <c>.safetensors</c> file: an 8-byte little-endian header length, a JSON header
/// (name -> dtype, shape, data_offsets), then the raw tensor bytes. Tensors are read through the
/// mapping one at a time; the file is never read whole into managed memory.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    readonly byte* _base;
    readonly long _dataStart;
    readonly long _length;

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorEntry> Entries { get; }

    public SafetensorsFile(string path)
    {
        Path = path;
        if (!System.IO.File.Exists(path)) throw new CheckpointException($"safetensors file not found: {path}");
        _length = new FileInfo(path).Length;
        if (_length < 8) throw new CheckpointException($"{path}: too short to be a safetensors file ({_length} bytes)");
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
        long headerLength = *(long*)_base;
        if (headerLength <= 0 || 8 + headerLength > _length)
            throw new CheckpointException($"{path}: header length {headerLength} does not fit a {_length}-byte file");
        _dataStart = 8 + headerLength;
        Entries = ParseHeader(new ReadOnlySpan<byte>(_base + 8, (int)headerLength));
    }

    Dictionary<string, TensorEntry> ParseHeader(ReadOnlySpan<byte> json)
    {
        JsonObject header;
        try { header = JsonNode.Parse(json) as JsonObject ?? throw new CheckpointException($"{Path}: header is not a JSON object"); }
        catch (JsonException e) { throw new CheckpointException($"{Path}: header is not valid JSON ({e.Message})"); }
        var entries = new Dictionary<string, TensorEntry>(StringComparer.Ordinal);
        long dataLength = _length - _dataStart;
        foreach (var (name, value) in header)
        {
            if (name == "__metadata__") continue;
            if (value is not JsonObject t) throw new CheckpointException($"{Path}: tensor '{name}' has no header object");
            var dtypeText = t["dtype"]?.GetValue<string>() ?? throw new CheckpointException($"{Path}: tensor '{name}' has no dtype");
            var dtype = dtypeText switch
            {
                "F32" => StorageDtype.F32,
                "F16" => StorageDtype.F16,
                "BF16" => StorageDtype.BF16,
                "F8_E4M3" => StorageDtype.F8_E4M3,
                _ => throw new CheckpointException($"{Path}: tensor '{name}' has dtype {dtypeText}; supported: F32, F16, BF16, F8_E4M3 (with weight_scale_inv)"),
            };
            var shape = (t["shape"] as JsonArray ?? throw new CheckpointException($"{Path}: tensor '{name}' has no shape"))
                .Select(x => x!.GetValue<long>()).ToArray();
            var offsets = t["data_offsets"] as JsonArray ?? throw new CheckpointException($"{Path}: tensor '{name}' has no data_offsets");
            long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
            var entry = new TensorEntry(name, dtype, shape, begin, end, Path);
            long expected = entry.ElementCount * TensorEntry.ElementSize(dtype);
            if (begin < 0 || end < begin || end > dataLength)
                throw new CheckpointException($"{Path}: tensor '{name}' data_offsets [{begin}, {end}] lie outside the {dataLength} data bytes (file truncated?)");
            if (end - begin != expected)
                throw new CheckpointException($"{Path}: tensor '{name}' has {end - begin} bytes but shape [{string.Join(", ", shape)}] {dtypeText} needs {expected}");
            entries[name] = entry;
        }
        return entries;
    }

    /// <summary>
    /// Reads one tensor's raw bytes into <paramref name="destination"/> with positioned reads, not through the mapping: pages
    /// read this way stay in the page cache and do not count in this process's resident memory (mapped pages touched
    /// would, for as long as the file stays mapped: all of a checkpoint's bytes during a load).
    /// </summary>
    public void ReadInto(TensorEntry entry, Span<byte> destination)
    {
        long length = entry.End - entry.Begin;
        if (destination.Length != length) throw new ArgumentException($"tensor '{entry.Name}' has {length} bytes, the destination {destination.Length}");
        _handle ??= System.IO.File.OpenHandle(Path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long at = _dataStart + entry.Begin;
        while (!destination.IsEmpty)
        {
            int read = RandomAccess.Read(_handle, destination, at);
            if (read <= 0) throw new CheckpointException($"{Path}: tensor '{entry.Name}' ends past the end of the file");
            destination = destination[read..];
            at += read;
        }
    }

    Microsoft.Win32.SafeHandles.SafeFileHandle? _handle;

    /// <summary>The raw bytes of one tensor, straight from the mapping (valid while this file is open).</summary>
    public ReadOnlySpan<byte> Bytes(TensorEntry entry) =>
        new(_base + _dataStart + entry.Begin, checked((int)(entry.End - entry.Begin)));

    public void Dispose()
    {
        _handle?.Dispose();
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}

public sealed class CheckpointException(string message) : Exception(message);
