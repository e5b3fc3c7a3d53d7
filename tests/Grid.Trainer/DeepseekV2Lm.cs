using Grid.ModelCore.Config;
using Grid.ModelCore.Weights;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Trainer;

/// <summary>What one forward pass gives: logits [B, S, V], the MoE balance loss (sum over MoE layers), per MoE layer the
/// gate's softmax affinities [B*S, E], and per layer the rows an MLA latent cache holds [B, S, kv_lora_rank + rope]:
/// the normed c_KV and the rotated shared key k_R.</summary>
public sealed record LmOutput(Tensor Logits, Tensor BalanceLoss, IReadOnlyList<Tensor> GateScores, IReadOnlyList<Tensor> Latents);

/// <summary>
/// A DeepSeek-V2 causal LM written for training with TorchSharp autograd, following the paper (arXiv 2405.04434) and the
/// reference modeling_deepseek.py: MLA with a compressed KV latent and a decoupled RoPE key shared by all heads (YaRN
/// scaled), DeepSeekMoE with softmax gate scores, greedy top-K and shared experts, RMSNorm, SwiGLU. Its parameters are
/// exactly the Hugging Face checkpoint's tensors (<see cref="TensorNames.All"/>), held by name, so writing it is writing
/// a checkpoint. Independent of model-core's inference code (only the config, names and safetensors I/O are shared).
/// </summary>
public sealed class DeepseekV2Lm : IDisposable
{
    public ModelConfig Config { get; }

    /// <summary>The balance loss weight α (config <c>aux_loss_alpha</c>; the loss is per sequence, <c>seq_aux</c>).</summary>
    public double AuxLossAlpha { get; }

    /// <summary>Every parameter by its checkpoint name, in checkpoint order.</summary>
    public IReadOnlyDictionary<string, Parameter> Parameters => _p;

    /// <summary>
    /// Applied to the rows a latent cache holds ([B, S, kv_lora_rank + rope]: the normed c_KV and the rotated k_R) before
    /// attention reads them, e.g. an 8-bit cache's round trip, for measurements; null reads them exactly. Every position
    /// then reads rounded rows, its own included.
    /// </summary>
    public Func<Tensor, Tensor>? CacheRoundTrip { get; set; }

    readonly Dictionary<string, Parameter> _p = new();
    readonly Tensor _cos, _sin;          // [maxPositions, rope dim]: cat(freqs, freqs), times YaRN's cos/sin mscale
    readonly double _softmaxScale;
    readonly int _maxPositions;

    DeepseekV2Lm(string configPath, Func<TensorSpec, Tensor> init, int maxPositions)
    {
        var config = ModelConfig.Load(configPath);
        Config = config;
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath))!;
        AuxLossAlpha = json["aux_loss_alpha"]?.GetValue<double>() ?? 0;
        if (AuxLossAlpha > 0 && json["seq_aux"]?.GetValue<bool>() != true)
            throw new NotSupportedException("only the per-sequence balance loss (seq_aux: true) is written here");
        _maxPositions = maxPositions;
        foreach (var spec in TensorNames.All(config))
            _p[spec.Name] = new Parameter(init(spec), requires_grad: true);
        (_cos, _sin, _softmaxScale) = Rotary(config, maxPositions);
    }

    /// <summary>Fresh weights: N(0, initializer_range) for matrices, ones for the RMSNorm gains (the reference's init).</summary>
    public static DeepseekV2Lm Initialize(string configPath, double initializerRange, int maxPositions)
    {
        using var noGrad = no_grad();
        return new DeepseekV2Lm(configPath, spec => spec.Shape.Length == 1
            ? ones(spec.Shape, ScalarType.Float32)
            : normal(0, initializerRange, spec.Shape, ScalarType.Float32), maxPositions);
    }

    /// <summary>A float32 checkpoint's weights (a golden, or one this trainer wrote).</summary>
    public static DeepseekV2Lm Load(string directory, int maxPositions)
    {
        var files = Directory.GetFiles(directory, "*.safetensors").Select(f => new SafetensorsFile(f)).ToList();
        try
        {
            var entries = files.SelectMany(f => f.Entries.Values.Select(e => (File: f, Entry: e))).ToDictionary(x => x.Entry.Name);
            using var noGrad = no_grad();
            return new DeepseekV2Lm(Path.Combine(directory, "config.json"), spec =>
            {
                var (file, entry) = entries[spec.Name];
                if (entry.Dtype != StorageDtype.F32) throw new InvalidDataException($"{spec.Name}: {entry.Dtype}, float32 expected");
                var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(file.Bytes(entry)).ToArray();
                return tensor(values, spec.Shape);
            }, maxPositions);
        }
        finally
        {
            foreach (var f in files) f.Dispose();
        }
    }

    /// <summary>The parameters as checkpoint tensors (float32 values copied now).</summary>
    public List<TensorData> Tensors() => _p.Select(kv =>
    {
        var values = kv.Value.detach().contiguous().data<float>().ToArray();
        return new TensorData(kv.Key, kv.Value.shape, () => values);
    }).ToList();

    Tensor W(string name) => _p[name];

    /// <summary>ids [B, S] (positions 0..S-1) -> logits [B, S, V], the balance loss and the gate scores.</summary>
    public LmOutput Forward(Tensor ids)
    {
        var c = Config;
        long b = ids.shape[0], s = ids.shape[1];
        if (s > _maxPositions) throw new ArgumentException($"{s} positions, at most {_maxPositions}");
        var h = W("model.embed_tokens.weight").index_select(0, ids.reshape(-1)).view(b, s, c.HiddenSize);  // [B, S, d]
        var balance = zeros(1, ScalarType.Float32);
        var gates = new List<Tensor>();
        var latents = new List<Tensor>();
        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            var p = TensorNames.Layer(layer);
            var (attention, latent) = Attention(p + ".self_attn", RmsNorm(h, p + ".input_layernorm.weight"));
            h = h + attention;
            latents.Add(latent);
            var x = RmsNorm(h, p + ".post_attention_layernorm.weight");
            if (!c.IsMoeLayer(layer))
            {
                h = h + Mlp(x, p + ".mlp");
                continue;
            }
            var (y, aux, scores) = Moe(x, layer);
            h = h + y;
            balance = balance + aux;
            gates.Add(scores);
        }
        h = RmsNorm(h, "model.norm.weight");
        var logits = matmul(h, W(c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight").t());  // [B, S, V]
        return new LmOutput(logits, balance, gates, latents);
    }

    /// <summary>RMSNorm: x / sqrt(mean(x²) + eps) · g.</summary>
    Tensor RmsNorm(Tensor x, string weight) =>
        W(weight) * (x * rsqrt(x.pow(2).mean([-1L], keepdim: true) + Config.RmsNormEps));

    static Tensor Linear(Tensor x, Tensor weight) => matmul(x, weight.t());

    /// <summary>SwiGLU FFN: down(silu(gate(x)) ⊙ up(x)).</summary>
    Tensor Mlp(Tensor x, string prefix) =>
        Linear(silu(Linear(x, W(prefix + ".gate_proj.weight"))) * Linear(x, W(prefix + ".up_proj.weight")), W(prefix + ".down_proj.weight"));

    /// <summary>
    /// Multi-head latent attention (§2.1): q = W_Q h (no query compression in this config), the latent
    /// c_KV = W_DKV h and the shared RoPE key k_R = RoPE(W_KR h) from one projection, k_C and v_C up-projected from
    /// RMSNorm(c_KV), per head q = [q_C; RoPE(q_R)], k = [k_C; k_R], causal softmax attention, then W_O. Also returns
    /// what a latent cache keeps per token: [RMSNorm(c_KV); RoPE(k_R)] [B, S, kv_lora_rank + rope].
    /// </summary>
    (Tensor Output, Tensor Latent) Attention(string p, Tensor x)
    {
        var c = Config;
        long b = x.shape[0], s = x.shape[1];
        int heads = c.NumAttentionHeads, nope = c.QkNopeHeadDim, rope = c.QkRopeHeadDim, v = c.VHeadDim;
        var q = Linear(x, W(p + ".q_proj.weight")).view(b, s, heads, nope + rope).transpose(1, 2);   // [B, H, S, nope+rope]
        var qNope = q.narrow(-1, 0, nope);
        var qRope = q.narrow(-1, nope, rope);
        var compressed = Linear(x, W(p + ".kv_a_proj_with_mqa.weight"));                            // [B, S, r + rope]
        var latent = compressed.narrow(-1, 0, c.KvLoraRank);
        var kRope = compressed.narrow(-1, c.KvLoraRank, rope).view(b, 1, s, rope);                   // one key for all heads
        var cos = _cos.narrow(0, 0, s);
        var sin = _sin.narrow(0, 0, s);
        var cached = cat([RmsNorm(latent, p + ".kv_a_layernorm.weight"), ApplyRope(kRope, cos, sin).select(1, 0)], -1);  // [B, S, r + rope]
        var read = CacheRoundTrip?.Invoke(cached) ?? cached;
        var kv = Linear(read.narrow(-1, 0, c.KvLoraRank), W(p + ".kv_b_proj.weight"))
            .view(b, s, heads, nope + v).transpose(1, 2);                                             // [B, H, S, nope+v]
        var kNope = kv.narrow(-1, 0, nope);
        var value = kv.narrow(-1, nope, v);
        qRope = ApplyRope(qRope, cos, sin);
        kRope = read.narrow(-1, c.KvLoraRank, rope).unsqueeze(1).expand(b, heads, s, rope);
        var query = cat([qNope, qRope], -1);
        var key = cat([kNope, kRope], -1);
        var scores = matmul(query, key.transpose(-2, -1)) * _softmaxScale;                           // [B, H, S, S]
        var future = ones(s, s, ScalarType.Bool).triu(1);
        var attn = softmax(scores.masked_fill(future, float.NegativeInfinity), -1);
        var o = matmul(attn, value).transpose(1, 2).reshape(b, s, heads * v);                         // [B, S, H*v]
        return (Linear(o, W(p + ".o_proj.weight")), cached);
    }

    /// <summary>The reference's RoPE: the checkpoint's interleaved pairs (x0, y0, x1, y1, ..) are regrouped into halves
    /// (x0..x7, y0..y7), then x·cos + rotate_half(x)·sin.</summary>
    static Tensor ApplyRope(Tensor x, Tensor cos, Tensor sin)
    {
        var shape = x.shape;
        long d = shape[^1];
        var halves = x.reshape(shape[0], shape[1], shape[2], d / 2, 2).transpose(-1, -2).reshape(shape);
        var x1 = halves.narrow(-1, 0, d / 2);
        var x2 = halves.narrow(-1, d / 2, d / 2);
        var rotated = cat([-x2, x1], -1);
        return halves * cos + rotated * sin;
    }

    /// <summary>
    /// DeepSeekMoE (§2.2): affinities s = softmax(x Eᵀ), the top-K experts by greedy selection, weights g = s of the chosen
    /// times routed_scaling_factor (or renormalised with norm_topk_prob); output Σ g_i FFN_i(x) + the shared experts' FFN.
    /// The routed experts run densely with zero weight where not chosen (the same values and gradients as sparse dispatch
    /// on a model this small). Balance loss (§2.2.3, seq_aux): α Σ_i f_i P_i per sequence, averaged over the batch.
    /// </summary>
    (Tensor Output, Tensor Balance, Tensor Scores) Moe(Tensor x, int layer)
    {
        var c = Config;
        var p = TensorNames.Layer(layer) + ".mlp";
        long b = x.shape[0], s = x.shape[1], d = x.shape[2];
        int experts = c.NRoutedExperts, k = c.NumExpertsPerTok;
        var tokens = x.reshape(b * s, d);                                                          // [N, d]
        var scores = softmax(Linear(tokens, W(p + ".gate.weight")), -1);                          // [N, E]
        var (top, chosen) = scores.topk(k, dim: -1, largest: true, sorted: true);                 // [N, K]
        var weights = c.NormTopkProb && k > 1 ? top / (top.sum(-1, keepdim: true) + 1e-20) : top * c.RoutedScalingFactor;
        var combine = zeros(b * s, experts, ScalarType.Float32).scatter(1, chosen, weights);      // [N, E], zero where not chosen
        var y = zeros_like(tokens);
        for (int e = 0; e < experts; e++)
            y = y + combine.narrow(1, e, 1) * Mlp(tokens, TensorNames.Expert(layer, e));
        if (c.NSharedExperts > 0) y = y + Mlp(tokens, p + ".shared_experts");
        var balance = zeros(1, ScalarType.Float32);
        if (AuxLossAlpha > 0)
        {
            // f_i: share of the sequence's K·S choices that went to expert i, times E/K; P_i: its mean affinity.
            var counts = zeros(b, experts, ScalarType.Float32)
                .scatter_add(1, chosen.view(b, s * k), ones(b, s * k, ScalarType.Float32)) / (s * k / (double)experts);
            var meanScore = scores.view(b, s, experts).mean([1L]);
            balance = (counts * meanScore).sum(-1).mean() * AuxLossAlpha;
        }
        return (y.view(b, s, d), balance, scores);
    }

    /// <summary>
    /// The YaRN-scaled rotary table as the reference builds it: inverse frequencies blended between extrapolation and
    /// interpolation (1/factor) by a linear ramp over the correction range of dims; cos/sin times
    /// mscale(factor, mscale) / mscale(factor, mscale_all_dim); softmax scale q_head_dim^-0.5 · mscale(factor, mscale_all_dim)².
    /// </summary>
    static (Tensor Cos, Tensor Sin, double SoftmaxScale) Rotary(ModelConfig c, int positions)
    {
        int dim = c.QkRopeHeadDim, half = dim / 2;
        double theta = c.RopeTheta;
        var invFreq = new double[half];
        for (int i = 0; i < half; i++) invFreq[i] = 1.0 / Math.Pow(theta, 2.0 * i / dim);
        double magnitude = 1, softmaxScale = 1.0 / Math.Sqrt(c.QHeadDim);
        if (c.RopeScaling is { } rs)
        {
            static double Mscale(double scale, double m) => scale <= 1 ? 1 : 0.1 * m * Math.Log(scale) + 1;
            if (rs.MscaleAllDim != 0) softmaxScale *= Math.Pow(Mscale(rs.Factor, rs.MscaleAllDim), 2);
            if (rs.Type != "yarn") throw new NotSupportedException($"rope_scaling {rs.Type}: only yarn is written here");
            double CorrectionDim(double rotations) => dim * Math.Log(rs.OriginalMaxPositionEmbeddings / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
            double low = Math.Max(Math.Floor(CorrectionDim(rs.BetaFast)), 0), high = Math.Min(Math.Ceiling(CorrectionDim(rs.BetaSlow)), dim - 1);
            if (low == high) high += 0.001;
            for (int i = 0; i < half; i++)
            {
                double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                double extrapolate = 1 - ramp;
                invFreq[i] = invFreq[i] / rs.Factor * (1 - extrapolate) + invFreq[i] * extrapolate;
            }
            magnitude = Mscale(rs.Factor, rs.Mscale) / Mscale(rs.Factor, rs.MscaleAllDim);
        }
        var cos = new float[positions * dim];
        var sin = new float[positions * dim];
        for (int t = 0; t < positions; t++)
            for (int i = 0; i < dim; i++)
            {
                double angle = t * invFreq[i % half];
                cos[t * dim + i] = (float)(Math.Cos(angle) * magnitude);
                sin[t * dim + i] = (float)(Math.Sin(angle) * magnitude);
            }
        return (tensor(cos, [positions, dim]), tensor(sin, [positions, dim]), softmaxScale);
    }

    public void Dispose()
    {
        foreach (var p in _p.Values) p.Dispose();
        _cos.Dispose();
        _sin.Dispose();
    }
}
