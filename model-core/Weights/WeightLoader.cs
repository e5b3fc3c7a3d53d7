using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using static TorchSharp.torch;

namespace Grid.ModelCore.Weights;

/// <summary>
/// Loads named tensors of one model from a <see cref="Checkpoint"/> in the compute dtype, checking shapes
/// against the config, and reports progress over the set of tensors this host loads.
/// </summary>
public sealed class WeightLoader
{
    readonly Checkpoint _checkpoint;
    readonly Dictionary<string, TensorSpec> _specs;
    readonly IProgress<LoadProgress>? _progress;
    readonly int _total;
    readonly long _totalBytes;
    int _done;
    long _bytesDone;
    long _bytesSinceTrim;
    const long TrimEveryBytes = 1L << 30;

    public ScalarType Dtype { get; }

    /// <summary>How linear weights loaded through <see cref="GetLinear"/> are stored; null keeps the checkpoint's own
    /// storage (FP8 for an FP8 checkpoint, the compute dtype otherwise).</summary>
    public WeightQuantization? Quantization { get; init; }
    /// <summary>Whether the linear weights it makes run Grid's C# kernels (<see cref="LinearWeight.UseKernels"/>).</summary>
    public bool Kernels { get; init; } = true;
    /// <summary>Whether the decoder's small float32 steps (RMSNorm, the SwiGLU activation, greedy routing, decode attention
    /// over cache rows in place) run C# over plain memory where <see cref="Kernels"/> is on (<see cref="Model.ModelLoadOptions.RowKernels"/>).</summary>
    public bool RowKernels { get; init; } = true;
    /// <summary>Whether a float32 prefill chunk's attention runs the C# kernel where <see cref="Kernels"/> is on
    /// (<see cref="Model.ModelLoadOptions.PrefillAttentionKernel"/>).</summary>
    public bool PrefillAttentionKernel { get; init; } = true;
    /// <summary><see cref="Kernels"/> and <see cref="RowKernels"/>.</summary>
    public bool DecodeKernels => Kernels && RowKernels;
    /// <summary>Which linear weights <see cref="Quantization"/> applies to, by tensor name (null: all of them); the
    /// others stay in the compute dtype. For measuring where 8-bit error comes from (per-tensor ablation).</summary>
    public Func<string, bool>? Quantize { get; init; }
    /// <summary>Checked after every tensor: a cancelled load throws <see cref="OperationCanceledException"/>.</summary>
    public CancellationToken Cancellation { get; init; }
    public ModelConfig Config { get; }

    /// <summary>The storage <see cref="Quantization"/> asks for the linear weight <paramref name="name"/> (fused ones by one of their parts' names).</summary>
    public WeightQuantization? QuantizationOf(string name) => Quantize is null || Quantize(name) ? Quantization : WeightQuantization.None;

    /// <summary>Names of the tensors loaded so far, in order.</summary>
    public List<string> Loaded { get; } = new();

    public WeightLoader(Checkpoint checkpoint, ModelConfig config, ScalarType dtype, Func<TensorSpec, bool> selected, IProgress<LoadProgress>? progress)
    {
        _checkpoint = checkpoint;
        Config = config;
        Dtype = dtype;
        _progress = progress;
        _specs = TensorNames.All(config).ToDictionary(s => s.Name);
        var mine = _specs.Values.Where(selected).ToList();
        _total = mine.Count;
        _totalBytes = mine.Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b) * 4);
    }

    public Tensor Get(string name)
    {
        var spec = _specs.TryGetValue(name, out var s) ? s : throw new CheckpointException($"tensor '{name}' is not part of a DeepSeek-V2 model with this config");
        var tensor = _checkpoint.Load(name, spec.Shape, Dtype);
        Count(name, spec);
        return tensor;
    }

    /// <summary>
    /// Tensor <paramref name="name"/> in <paramref name="dtype"/> when the checkpoint stores it so (kept as stored: no
    /// rounding), otherwise in the compute dtype as <see cref="Get"/> loads it.
    /// </summary>
    public Tensor GetStored(string name, ScalarType dtype)
    {
        var stored = _checkpoint.Entries.TryGetValue(name, out var entry) ? entry.Dtype : (StorageDtype?)null;
        bool asStored = (stored, dtype) is (StorageDtype.BF16, ScalarType.BFloat16) or (StorageDtype.F16, ScalarType.Float16) or (StorageDtype.F32, ScalarType.Float32);
        if (!asStored) return Get(name);
        var spec = _specs.TryGetValue(name, out var s) ? s : throw new CheckpointException($"tensor '{name}' is not part of a DeepSeek-V2 model with this config");
        var tensor = _checkpoint.Load(name, spec.Shape, dtype);
        Count(name, spec);
        return tensor;
    }

    void Count(string name, TensorSpec spec)
    {
        Loaded.Add(name);
        _done++;
        long bytes = spec.Shape.Aggregate(1L, (a, b) => a * b) * 4;
        _bytesDone += bytes;
        // Each tensor passes through transient buffers (its stored bytes, a float copy) on the C heap; glibc keeps freed
        // ones in its arenas between the long-lived 8-bit matrices. Hand them back now and then so resident memory
        // follows what the model holds.
        _bytesSinceTrim += bytes;
        if (_bytesSinceTrim >= TrimEveryBytes)
        {
            _bytesSinceTrim = 0;
            Runtime.HeapTrim.Return();
        }
        _progress?.Report(new LoadProgress(_done, _total, _bytesDone, _totalBytes, name));
        Cancellation.ThrowIfCancellationRequested();
    }

    /// <summary>
    /// A linear weight in the storage <see cref="Quantization"/> asks for, quantized as it is loaded (the float tensor is
    /// freed at once). An FP8 checkpoint's weight is taken as is when FP8 is wanted, dequantized otherwise.
    /// </summary>
    public LinearWeight GetLinear(string name)
    {
        var wanted = QuantizationOf(name) ?? (_checkpoint.IsFp8(name) ? WeightQuantization.Fp8 : WeightQuantization.None);
        if (wanted == WeightQuantization.Fp8 && _checkpoint.IsFp8(name))
        {
            var spec = _specs.TryGetValue(name, out var s) ? s : throw new CheckpointException($"tensor '{name}' is not part of a DeepSeek-V2 model with this config");
            var matrix = _checkpoint.LoadFp8(name, spec.Shape);
            Count(name, spec);
            return LinearWeight.FromQuantized(matrix, Kernels);
        }
        return LinearWeight.Create(Get(name), wanted, Kernels);
    }

    public Tensor? GetOptional(string name, bool wanted) => wanted ? Get(name) : null;
}
