using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Grid.ModelCore.Weights;

/// <summary>Progress of a weight load: tensors and bytes done out of the total.</summary>
public readonly record struct LoadProgress(int TensorsDone, int TensorsTotal, long BytesDone, long BytesTotal, string Current);

/// <summary>
/// A Hugging Face checkpoint folder: one <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c>. Tensors are loaded one at a time from the memory-mapped files and
/// converted to the compute dtype; a host may load any subset.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    readonly Dictionary<string, SafetensorsFile> _files = new(StringComparer.Ordinal);
    readonly Dictionary<string, TensorEntry> _entries = new(StringComparer.Ordinal);

    public string Directory { get; }
    public IReadOnlyDictionary<string, TensorEntry> Entries => _entries;

    Checkpoint(string directory) => Directory = directory;

    public static Checkpoint Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory)) throw new CheckpointException($"checkpoint folder not found: {directory}");
        var ckpt = new Checkpoint(directory);
        try
        {
            var index = System.IO.Path.Combine(directory, "model.safetensors.index.json");
            if (System.IO.File.Exists(index))
            {
                JsonObject weightMap;
                try
                {
                    weightMap = JsonNode.Parse(System.IO.File.ReadAllText(index))?["weight_map"] as JsonObject
                        ?? throw new CheckpointException($"{index}: no weight_map object");
                }
                catch (JsonException e) { throw new CheckpointException($"{index}: not valid JSON ({e.Message})"); }
                foreach (var (name, fileNode) in weightMap)
                {
                    var fileName = fileNode?.GetValue<string>() ?? throw new CheckpointException($"{index}: tensor '{name}' maps to no file");
                    var file = ckpt.File(System.IO.Path.Combine(directory, fileName), index);
                    if (!file.Entries.TryGetValue(name, out var entry))
                        throw new CheckpointException($"{index}: tensor '{name}' is listed in {fileName} but that file does not hold it");
                    ckpt._entries[name] = entry;
                }
            }
            else
            {
                var files = System.IO.Directory.GetFiles(directory, "*.safetensors").OrderBy(f => f, StringComparer.Ordinal).ToArray();
                if (files.Length == 0) throw new CheckpointException($"{directory}: no model.safetensors or model.safetensors.index.json");
                foreach (var path in files)
                    foreach (var (name, entry) in ckpt.File(path, null).Entries)
                        ckpt._entries[name] = entry;
            }
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
        return ckpt;
    }

    SafetensorsFile File(string path, string? referencedBy)
    {
        if (_files.TryGetValue(path, out var f)) return f;
        if (!System.IO.File.Exists(path))
            throw new CheckpointException($"shard {System.IO.Path.GetFileName(path)} not found in {Directory}" + (referencedBy is null ? "" : $" (listed in {System.IO.Path.GetFileName(referencedBy)})"));
        return _files[path] = new SafetensorsFile(path);
    }

    /// <summary>Loads one tensor, checks its shape, converts it to <paramref name="dtype"/>. The caller owns the result (it belongs to no dispose scope).</summary>
    public Tensor Load(string name, long[] expectedShape, ScalarType dtype)
    {
        if (!_entries.TryGetValue(name, out var entry))
            throw new CheckpointException($"tensor '{name}' not found in checkpoint {Directory} (expected shape [{string.Join(", ", expectedShape)}])");
        if (!entry.Shape.SequenceEqual(expectedShape))
            throw new CheckpointException($"tensor '{name}' has shape [{string.Join(", ", entry.Shape)}] in the checkpoint but the config expects [{string.Join(", ", expectedShape)}]");
        if (entry.Dtype == StorageDtype.F8_E4M3)
        {
            using var fp8 = LoadFp8(name, expectedShape);
            using var dequantScope = NewDisposeScope();
            var values = fp8.Dequantize();
            return (dtype == ScalarType.Float32 ? values : values.to(dtype)).DetachFromDisposeScope();
        }
        var source = entry.Dtype switch
        {
            StorageDtype.F32 => ScalarType.Float32,
            StorageDtype.F16 => ScalarType.Float16,
            _ => ScalarType.BFloat16,
        };
        using var scope = NewDisposeScope();
        var raw = empty(entry.Shape, source);
        _files[entry.File].ReadInto(entry, raw.bytes);
        var result = source == dtype ? raw : raw.to(dtype);
        return result.DetachFromDisposeScope();
    }

    /// <summary>The name of the block-scale tensor of an FP8 weight (DeepSeek-V3: <c>&lt;name&gt;_scale_inv</c>).</summary>
    public static string ScaleName(string weightName) => weightName + "_scale_inv";

    /// <summary>Whether tensor <paramref name="name"/> is stored as FP8 E4M3.</summary>
    public bool IsFp8(string name) => _entries.TryGetValue(name, out var e) && e.Dtype == StorageDtype.F8_E4M3;

    /// <summary>
    /// An FP8 E4M3 weight with its float32 block scales <c>&lt;name&gt;_scale_inv</c> [ceil(rows/128), ceil(cols/128)], as is
    /// (codes and scales copied, nothing dequantized).
    /// </summary>
    public Kernels.QuantizedMatrix LoadFp8(string name, long[] expectedShape)
    {
        if (!_entries.TryGetValue(name, out var entry))
            throw new CheckpointException($"tensor '{name}' not found in checkpoint {Directory} (expected shape [{string.Join(", ", expectedShape)}])");
        if (!entry.Shape.SequenceEqual(expectedShape))
            throw new CheckpointException($"tensor '{name}' has shape [{string.Join(", ", entry.Shape)}] in the checkpoint but the config expects [{string.Join(", ", expectedShape)}]");
        if (entry.Dtype != StorageDtype.F8_E4M3 || entry.Shape.Length != 2)
            throw new CheckpointException($"tensor '{name}' is not an FP8 E4M3 matrix");
        var scaleName = ScaleName(name);
        if (!_entries.TryGetValue(scaleName, out var scales))
            throw new CheckpointException($"FP8 tensor '{name}' has no block scales '{scaleName}' in checkpoint {Directory}");
        int rows = (int)entry.Shape[0], cols = (int)entry.Shape[1];
        long[] scaleShape = [(rows + 127) / 128, (cols + 127) / 128];
        if (scales.Dtype != StorageDtype.F32 || !scales.Shape.SequenceEqual(scaleShape))
            throw new CheckpointException($"'{scaleName}' is {scales.Dtype} [{string.Join(", ", scales.Shape)}]; an FP8 weight [{rows}, {cols}] with 128x128 blocks needs F32 [{scaleShape[0]}, {scaleShape[1]}]");
        var codes = _files[entry.File].Bytes(entry);
        foreach (var c in codes)
            if (Kernels.Fp8E4M3.IsNaN(c)) throw new CheckpointException($"FP8 tensor '{name}' holds a NaN code");
        var scaleValues = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_files[scales.File].Bytes(scales));
        foreach (var v in scaleValues)
            if (!float.IsFinite(v) || v < 0) throw new CheckpointException($"'{scaleName}' holds a scale that is negative or not finite ({v})");
        return Kernels.QuantizedMatrix.FromFp8Blocks(codes, rows, cols, scaleValues);
    }

    public void Dispose()
    {
        foreach (var f in _files.Values) f.Dispose();
        _files.Clear();
    }
}
