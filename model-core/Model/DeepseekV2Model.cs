using Grid.ModelCore.Cache;
using Grid.ModelCore.Config;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Model;

/// <summary>What one host loads: the attention/dense part (embedding, every layer's MLA, norms, gate,
/// shared experts and dense MLPs, final norm, lm_head) and/or some expert groups.</summary>
public sealed record ModelLoadOptions
{
    public ScalarType Dtype { get; init; } = ScalarType.Float32;
    /// <summary>How linear weights are stored (<c>--quantization</c>); null keeps the checkpoint's storage (FP8 for an FP8
    /// checkpoint, the compute dtype otherwise).</summary>
    public Kernels.WeightQuantization? Quantization { get; init; }
    /// <summary>Whether linear layers, experts and lm_head run Grid's C# kernels: the batch-invariant float32 GEMM
    /// (<see cref="Kernels.InvariantGemm"/>: a row's result is the same bits in any batch, so a cache rebuilt by prefill
    /// equals the one decode wrote) and the 8-bit small-batch kernels. False runs libtorch's matmul everywhere (for
    /// comparisons; a row's result may then depend on its batch's size).</summary>
    public bool UseKernels { get; init; } = true;
    /// <summary>Whether, with <see cref="UseKernels"/>, the decoder's small float32 steps run C# over plain memory instead
    /// of several libtorch calls each: RMSNorm and the SwiGLU activation (row by row, the same bits in any batch), greedy
    /// routing, the decode step's cache write and absorbed attention over the cache rows in place. False keeps libtorch
    /// there (for comparisons).</summary>
    public bool RowKernels { get; init; } = true;
    /// <summary>Whether, with <see cref="UseKernels"/>, a float32 prefill chunk's attention runs the C# kernel
    /// (<see cref="MlaAttention.AttendPrefill"/>: kv_b_proj packed for the GEMM, causal attention per head over plain
    /// memory). False keeps kv_b_proj dense and the libtorch ops (for comparisons).</summary>
    public bool PrefillAttentionKernel { get; init; } = true;
    /// <summary>Which linear weights <see cref="Quantization"/> applies to, by tensor name (null: all; the fused q/kv_a
    /// projection goes by <c>kv_a_proj_with_mqa</c>'s name). For measuring where 8-bit error comes from.</summary>
    public Func<string, bool>? QuantizeOnly { get; init; }
    /// <summary>Ends a load in progress at the next tensor (<see cref="OperationCanceledException"/>): a host stopping mid-load.</summary>
    public CancellationToken Cancellation { get; init; }
    public bool LoadAttention { get; init; } = true;
    /// <summary>Expert groups to load; null loads every routed expert as one group.</summary>
    public IReadOnlyList<ExpertRange>? ExpertRanges { get; init; }
    /// <summary>How latent-cache rows are stored (<c>--kv-cache-dtype</c>): the compute dtype, or 8 bits with per-token scales.</summary>
    public KvCacheDtype KvCacheDtype { get; init; } = KvCacheDtype.Auto;
    public int CacheBlockSize { get; init; } = 16;
    public int CacheInitialBlocks { get; init; } = 64;
    /// <summary>Share the latent cache's full blocks between sequences with equal prefixes (<see cref="LatentCache.PrefixCaching"/>; Grid:Silo:PrefixCaching).</summary>
    public bool PrefixCaching { get; init; } = true;
    /// <summary>The latent-cache budget of this host in bytes (rounded down to whole blocks); null derives it from
    /// <see cref="MemoryUtilization"/> once the weights are loaded (<see cref="CacheBudget"/>).</summary>
    public long? CacheMaxBytes { get; init; }
    /// <summary>The fraction of host memory this process may use in all when <see cref="CacheMaxBytes"/> is not given.</summary>
    public double MemoryUtilization { get; init; } = CacheBudget.DefaultMemoryUtilization;
}

/// <summary>
/// A DeepSeek-V2 model (or the part of it one host serves). The forward pass is exposed in the pieces the
/// grid distributes - <see cref="Embed"/>, <see cref="Attention"/>, <see cref="FfnInput"/>, <see cref="Route"/>,
/// <see cref="Dense"/>, <see cref="Shared"/>, <see cref="Experts"/>, <see cref="Logits"/> - and
/// composed for a single process by <see cref="Forward"/>. Every method runs on the inference thread.
/// </summary>
public sealed class DeepseekV2Model : IDisposable
{
    readonly Tensor? _embedTokens;   // [V, d]; in the compute dtype, or bf16 as stored (see the constructor)
    readonly RmsNorm? _norm;
    readonly Kernels.LinearWeight? _lmHead;   // [V, d]; 8-bit with a --quantization (null when tied: the embedding is used)
    readonly DecoderLayer[] _layers;

    public ModelConfig Config { get; }
    /// <summary>The checkpoint folder it was loaded from (null when loaded from a <see cref="Checkpoint"/>): the shard reads its tokenizer's vocabulary from there.</summary>
    public string? SourceDirectory { get; private set; }
    public ScalarType Dtype { get; }
    /// <summary>The weight storage asked for at load (null: the checkpoint's own).</summary>
    public Kernels.WeightQuantization? Quantization { get; }
    /// <summary>Whether it runs Grid's C# kernels (<see cref="ModelLoadOptions.UseKernels"/>).</summary>
    public bool UseKernels { get; }
    /// <summary>Whether it runs the C# row kernels (<see cref="ModelLoadOptions.RowKernels"/>).</summary>
    public bool RowKernels { get; }
    public YarnRope Rope { get; }
    public LatentCache? Cache { get; }
    /// <summary>The latent-cache budget chosen at load (bytes, before rounding to blocks) and how it was chosen.</summary>
    public long CacheBudgetBytes { get; }
    public string CacheBudgetReason { get; } = "";
    /// <summary>The expert groups this host holds, in expert order (a snapshot: <see cref="LoadExpertGroup(string, ExpertRange, IProgress{LoadProgress}?)"/> replaces it).</summary>
    public IReadOnlyList<Experts> ExpertGroups => _expertGroups;
    public bool HasAttention => _embedTokens is not null;

    /// <summary>
    /// Bytes of the attention part's weights this host holds (embedding, every layer's MLA, norms, gates, shared experts and
    /// dense MLPs, final norm, lm_head), as stored (8-bit where quantized); 0 on a host that did not load it.
    /// </summary>
    public long AttentionWeightBytes =>
        Runtime.WeightBytes.Of(_embedTokens) + (_lmHead?.Bytes ?? 0) + (_norm?.Bytes ?? 0) + _layers.Sum(l => l.Bytes);

    /// <summary>Bytes of every weight this host holds: <see cref="AttentionWeightBytes"/> and its expert groups'.</summary>
    public long WeightBytesHeld => AttentionWeightBytes + ExpertGroups.Sum(g => g.Bytes);

    /// <summary>Names of the tensors this host loaded.</summary>
    public IReadOnlyList<string> LoadedTensors => _loadedTensors;

    // Replaced (never mutated) when a group is added, so readers off the inference thread see a consistent list.
    volatile Experts[] _expertGroups;
    volatile string[] _loadedTensors;

    DeepseekV2Model(ModelConfig config, ModelLoadOptions options, WeightLoader w, IReadOnlyList<ExpertRange> ranges)
    {
        Config = config;
        Dtype = options.Dtype;
        Quantization = options.Quantization;
        UseKernels = options.UseKernels;
        RowKernels = options.UseKernels && options.RowKernels;
        Rope = new YarnRope(config, options.Dtype);
        if (options.LoadAttention)
        {
            // With 8-bit weights an untied bf16 embedding stays in bf16 (exact: it is the checkpoint's own value); rows are
            // widened to the compute dtype as they are looked up.
            _embedTokens = options.Quantization is Kernels.WeightQuantization.Int8 or Kernels.WeightQuantization.Fp8 && !config.TieWordEmbeddings
                ? w.GetStored("model.embed_tokens.weight", ScalarType.BFloat16)
                : w.Get("model.embed_tokens.weight");
            _layers = new DecoderLayer[config.NumHiddenLayers];
            for (int i = 0; i < config.NumHiddenLayers; i++) _layers[i] = new DecoderLayer(w, i, Rope.SoftmaxScale);
            _norm = new RmsNorm(w.Get("model.norm.weight"), config.RmsNormEps, w.DecodeKernels);
            _lmHead = config.TieWordEmbeddings ? null : w.GetLinear("lm_head.weight");
        }
        else
        {
            _layers = [];
        }
        _expertGroups = ranges.Select(r => new Experts(w, r)).ToArray();
        _loadedTensors = w.Loaded.ToArray();
        if (options.LoadAttention)
        {
            // Every weight is resident now: what is left of the host's share is the cache's.
            CacheBudgetBytes = CacheBudget.Resolve(options.CacheMaxBytes, options.MemoryUtilization, out var reason);
            CacheBudgetReason = reason;
            var codec = options.KvCacheDtype == KvCacheDtype.Auto ? null : new LatentRowCodec(options.KvCacheDtype, config.LatentDim, config.KvLoraRank);
            Cache = new LatentCache(config.NumHiddenLayers, config.LatentDim, options.Dtype, options.CacheBlockSize, options.CacheInitialBlocks,
                LatentCache.BlocksFor(CacheBudgetBytes, config.NumHiddenLayers, config.LatentDim, options.Dtype, options.CacheBlockSize, codec), codec)
            { PrefixCaching = options.PrefixCaching };
        }
    }

    public static DeepseekV2Model Load(string directory, ModelLoadOptions? options = null, IProgress<LoadProgress>? progress = null)
    {
        var config = ModelConfig.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = Checkpoint.Open(directory);
        var model = Load(checkpoint, config, options, progress);
        model.SourceDirectory = directory;
        return model;
    }

    public static DeepseekV2Model Load(Checkpoint checkpoint, ModelConfig config, ModelLoadOptions? options = null, IProgress<LoadProgress>? progress = null)
    {
        options ??= new ModelLoadOptions();
        var ranges = options.ExpertRanges ?? (config.NRoutedExperts > 0 ? [new ExpertRange(0, config.NRoutedExperts)] : []);
        foreach (var r in ranges)
            if (r.First < 0 || r.Count < 1 || r.End > config.NRoutedExperts)
                throw new ArgumentException($"expert group {r} lies outside the {config.NRoutedExperts} routed experts");
        bool Selected(TensorSpec s) => s.Expert is int e ? ranges.Any(r => r.Contains(e)) : options.LoadAttention;
        using var heapPolicy = HeapTrim.LoadScope();
        var loader = new WeightLoader(checkpoint, config, options.Dtype, Selected, progress) { Quantization = options.Quantization, Kernels = options.UseKernels, RowKernels = options.RowKernels, PrefillAttentionKernel = options.PrefillAttentionKernel, Quantize = options.QuantizeOnly, Cancellation = options.Cancellation };
        return new DeepseekV2Model(config, options, loader, ranges);
    }

    /// <summary>
    /// Loads one more expert group (its routed experts of every MoE layer, in this model's dtype) from the checkpoint
    /// folder into this already-loaded model: an elastic host takes on a group it did not load at start. Idempotent:
    /// a group already held is returned as is. A range that overlaps a held group without being equal to it is refused.
    /// Runs on the inference thread.
    /// </summary>
    public Experts LoadExpertGroup(string directory, ExpertRange range, IProgress<LoadProgress>? progress = null)
    {
        if (Held(range) is { } held) return held;
        using var checkpoint = Checkpoint.Open(directory);
        return LoadExpertGroup(checkpoint, range, progress);
    }

    /// <inheritdoc cref="LoadExpertGroup(string, ExpertRange, IProgress{LoadProgress}?)"/>
    public Experts LoadExpertGroup(Checkpoint checkpoint, ExpertRange range, IProgress<LoadProgress>? progress = null)
    {
        if (Held(range) is { } held) return held;
        if (range.First < 0 || range.Count < 1 || range.End > Config.NRoutedExperts)
            throw new ArgumentException($"expert group {range} lies outside the {Config.NRoutedExperts} routed experts");
        if (_expertGroups.FirstOrDefault(g => g.Range.First < range.End && range.First < g.Range.End) is { } overlap)
            throw new ArgumentException($"expert group {range} overlaps the group {overlap.Range} this host already holds");
        using var heapPolicy = HeapTrim.LoadScope();
        using var scope = NewDisposeScope();
        var loader = new WeightLoader(checkpoint, Config, Dtype, s => s.Expert is int e && range.Contains(e), progress) { Quantization = Quantization, Kernels = UseKernels, RowKernels = RowKernels };
        var experts = new Experts(loader, range);   // its tensors belong to no dispose scope: the model owns them
        _expertGroups = _expertGroups.Append(experts).OrderBy(g => g.Range.First).ToArray();
        _loadedTensors = [.. _loadedTensors, .. loader.Loaded];
        return experts;
    }

    Experts? Held(ExpertRange range) => _expertGroups.FirstOrDefault(g => g.Range == range);

    DecoderLayer LayerAt(int layer) => _layers.Length > layer
        ? _layers[layer]
        : throw new InvalidOperationException("this host did not load the attention part of the model");

    /// <summary>Token ids [N] -> hidden states [N, d].</summary>
    public Tensor Embed(int[] tokens)
    {
        if (_embedTokens is null) throw new InvalidOperationException("this host did not load the embedding");
        foreach (var t in tokens)
            if (t < 0 || t >= Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary (0..{Config.VocabSize - 1})");
        var rows = _embedTokens.index_select(0, tensor(tokens.Select(t => (long)t).ToArray(), ScalarType.Int64));
        return rows.dtype == Dtype ? rows : rows.to(Dtype);
    }

    /// <summary>h [N, d] -> h + MLA(RMSNorm(h)) for layer <paramref name="layer"/>, writing the new tokens' latents.</summary>
    public Tensor Attention(int layer, Tensor h, StepBatch batch, AttentionMode mode = AttentionMode.Auto, StepProfile? profile = null)
    {
        var l = LayerAt(layer);
        var cache = Cache!;
        var x = Measure(profile, StepProfile.AttentionNorm, () => l.InputNorm.Forward(h));
        var (cos, sin) = batch.Rotary(Rope);
        var (qNope, qRope, latent) = Measure(profile, StepProfile.AttentionProject, () => l.Attention.Project(x, cos, sin, Rope));
        Tensor output;
        if (batch.AllDecode)
        {
            // A decode-only step: the hidden rows are the decode rows, in order; no scatter into a zeroed buffer.
            Measure(profile, StepProfile.AttentionCache, () => { WriteLatents(layer, batch, latent); return 0; });
            output = Measure(profile, StepProfile.AttentionScores, () => AttendDecode(l.Attention, layer, qNope, qRope, batch));
            var projected = Measure(profile, StepProfile.AttentionOutput, () => l.Attention.Output(output));
            return Measure(profile, StepProfile.Residual, () => h.Add(projected));
        }
        WriteLatents(layer, batch, latent);
        if (batch.Chunks.Count == 1)
        {
            var seqCache = Measure(profile, StepProfile.AttentionCache, () => cache.Read(layer, batch.ChunkCacheRows[0]!));
            output = Measure(profile, StepProfile.AttentionScores, () => mode == AttentionMode.Absorbed
                ? l.Attention.AttendAbsorbed(qNope, qRope, seqCache, batch.Starts[0])
                : l.Attention.AttendNaive(qNope, qRope, seqCache, batch.Starts[0]));
        }
        else
        {
            output = zeros(batch.Rows, Config.NumAttentionHeads * Config.VHeadDim, dtype: h.dtype);
            if (batch.DecodeRows is { } decodeRows)
            {
                var decoded = AttendDecode(l.Attention, layer, qNope.index_select(0, decodeRows), qRope.index_select(0, decodeRows), batch);
                output.index_copy_(0, decodeRows, decoded);
            }
            for (int i = 0; i < batch.Chunks.Count; i++)
            {
                if (batch.ChunkCacheRows[i] is not { } rows) continue;
                int n = batch.Chunks[i].Tokens.Length, offset = batch.Offsets[i];
                var seqCache = cache.Read(layer, rows);
                var qn = qNope.narrow(0, offset, n);
                var qr = qRope.narrow(0, offset, n);
                var attended = mode == AttentionMode.Absorbed
                    ? l.Attention.AttendAbsorbed(qn, qr, seqCache, batch.Starts[i])
                    : l.Attention.AttendNaive(qn, qr, seqCache, batch.Starts[i]);
                output.narrow(0, offset, n).copy_(attended);
            }
        }
        var attentionOutput = Measure(profile, StepProfile.AttentionOutput, () => l.Attention.Output(output));
        return Measure(profile, StepProfile.Residual, () => h.Add(attentionOutput));
    }

    /// <summary>This step's latents [N, latent] into the cache: in place (C#) with the row kernels, else index_copy_.</summary>
    void WriteLatents(int layer, StepBatch batch, Tensor latent)
    {
        if (RowKernels) Cache!.Write(layer, batch.WriteRows, batch.WriteRowIds, latent);
        else Cache!.Write(layer, batch.WriteRows, latent);
    }

    /// <summary>The step's decode rows (queries [B, H, *]) against their caches: in place through the kernel where it
    /// runs (float32 rows, no codec), else gathered [B, Tmax, latent] through libtorch.</summary>
    Tensor AttendDecode(MlaAttention attention, int layer, Tensor qNope, Tensor qRope, StepBatch batch)
    {
        var cache = Cache!;
        if (attention.DecodeKernel(qNope) && cache.Float32Pool(layer) is { } pool)
            return attention.AttendDecode(qNope, qRope, pool, batch.DecodeGatherRows, batch.DecodeLengths, (int)batch.DecodeTmax);
        var caches = cache.Read(layer, batch.DecodeGather!).view(batch.DecodeChunks.Length, batch.DecodeTmax, Config.LatentDim);
        return attention.AttendAbsorbedBatch(qNope, qRope, caches, batch.DecodeMaskedOut);
    }

    static T Measure<T>(StepProfile? profile, string phase, Func<T> work) => profile is null ? work() : profile.Measure(phase, work);

    /// <summary>The post-attention RMSNorm: the input of the layer's feed-forward block.</summary>
    public Tensor FfnInput(int layer, Tensor h) => LayerAt(layer).PostAttentionNorm.Forward(h);

    public bool IsMoeLayer(int layer) => Config.IsMoeLayer(layer);

    public Routing Route(int layer, Tensor x, DeviceLimit? limit = null) =>
        (LayerAt(layer).Gate ?? throw new InvalidOperationException($"layer {layer} is dense")).Route(x, limit);

    public Tensor Dense(int layer, Tensor x) =>
        (LayerAt(layer).DenseMlp ?? throw new InvalidOperationException($"layer {layer} is a MoE layer")).Forward(x);

    /// <summary>Shared experts of a MoE layer, or null where the config has none.</summary>
    public Tensor? Shared(int layer, Tensor x) => LayerAt(layer).SharedExperts?.Forward(x);

    /// <summary>Sum of the local expert groups' outputs, in group order.</summary>
    public Tensor Experts(int layer, Tensor x, Routing routing)
    {
        Tensor? sum = null;
        foreach (var g in ExpertGroups)
        {
            var part = g.Forward(layer, x, routing);
            sum = sum is null ? part : sum.Add(part);
        }
        return sum ?? zeros_like(x);
    }

    /// <summary>Final RMSNorm and lm_head: h [N, d] -> logits [N, V] in float32.</summary>
    public Tensor Logits(Tensor h)
    {
        if (_norm is null || _embedTokens is null) throw new InvalidOperationException("this host did not load lm_head");
        var normed = _norm.Forward(h);
        // lm_head is a LinearWeight: float32 goes through the batch-invariant GEMM (a token's logits are the same bits
        // whatever else is in the step), 8-bit through the kernels. Tied embeddings use libtorch.
        return (_lmHead is null ? linear(normed, _embedTokens) : _lmHead.Forward(normed)).to(ScalarType.Float32);
    }

    /// <summary>
    /// One forward step of this process over <paramref name="chunks"/>: returns logits [rows, V] (float32) for
    /// each chunk's last token, every token of AllLogits chunks, none of NoLogits chunks, and per MoE layer the routing.
    /// The routed experts run on this host's expert groups; the result is detached (the caller disposes it).
    /// </summary>
    public StepOutput Forward(IReadOnlyList<SequenceChunk> chunks, AttentionMode mode = AttentionMode.Auto, DeviceLimit? limit = null, bool keepRouting = false, StepProfile? profile = null)
    {
        using var walk = new LayerWalk(this, chunks, mode, limit, profile);
        var routings = keepRouting ? new Dictionary<int, Routing>() : null;
        Tensor? routed = null;
        while (walk.Advance(routed) is { } dispatch)
        {
            routed?.Dispose();
            if (routings is not null) routings[dispatch.Layer] = dispatch.Routing;
            using var scope = NewDisposeScope();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            routed = Experts(dispatch.Layer, dispatch.Input, dispatch.Routing).DetachFromDisposeScope();
            profile?.Add(StepProfile.RoutedExperts, sw.Elapsed);
        }
        routed?.Dispose();
        return new StepOutput(walk.TakeLogits(), routings);
    }

    public void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
        foreach (var g in ExpertGroups) g.Dispose();
        _embedTokens?.Dispose();
        _lmHead?.Dispose();
        _norm?.Dispose();
        Rope.Dispose();
        Cache?.Dispose();
    }
}

/// <summary>Logits [rows, V] of one step (caller disposes) and, when asked, the routing of each MoE layer.</summary>
public sealed record StepOutput(Tensor Logits, IReadOnlyDictionary<int, Routing>? Routing) : IDisposable
{
    public void Dispose() => Logits.Dispose();
}
