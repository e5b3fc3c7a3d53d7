using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Runtime;
using TorchSharp;
using Grid.ModelCore.Weights;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Model;

/// <summary>How attention over the latent cache is computed.</summary>
public enum AttentionMode
{
    /// <summary>Naive form for multi-token prefill chunks, absorbed form for single-token decode.</summary>
    Auto,
    /// <summary>Always expand c_KV into per-head keys and values (W_UK, W_UV applied to the cache).</summary>
    Naive,
    /// <summary>Always the absorbed form: W_UK folded into the query, W_UV into the output.</summary>
    Absorbed,
}

/// <summary>
/// Multi-head Latent Attention (DeepSeek-V2 §2.1) for one layer: queries through an optional low-rank
/// compression (q_a_proj, q_a_layernorm, q_b_proj), keys and values through the joint compression
/// c_KV = kv_a_layernorm(W_DKV h) of kv_lora_rank elements, and a decoupled RoPE key k_R shared by all
/// heads. The latent cache holds only [c_KV, k_R] per token.
/// </summary>
public sealed class MlaAttention : IDisposable
{
    readonly int _heads, _nope, _rope, _v, _kvLoraRank;
    readonly Scalar _softmaxScale;           // owned for the layer's lifetime (see Scalars)
    readonly LinearWeight? _qProj;                 // [H*(nope+rope), d]            (q_lora_rank null)
    readonly LinearWeight? _qAProj;
    readonly Tensor? _qABias;       // [q_lora_rank, d]
    readonly RmsNorm? _qANorm;
    readonly LinearWeight? _qBProj;                // [H*(nope+rope), q_lora_rank]
    readonly LinearWeight _kvAProj;                // [kv_lora_rank + rope, d]
    readonly Tensor? _kvABias;
    readonly RmsNorm _kvANorm;
    readonly Tensor _kvBProj;                // [H*(nope+v), kv_lora_rank]
    readonly Tensor _wUK;                    // [H, nope, kv_lora_rank]   absorbed into queries
    readonly Tensor _wUVt;                   // [H, kv_lora_rank, v]      absorbed into the output
    readonly LinearWeight _oProj;                  // [d, H*v]
    readonly Tensor? _oBias;

    public MlaAttention(WeightLoader w, int layer, double softmaxScale)
    {
        var c = w.Config;
        var p = TensorNames.Layer(layer) + ".self_attn";
        _heads = c.NumAttentionHeads;
        _nope = c.QkNopeHeadDim;
        _rope = c.QkRopeHeadDim;
        _v = c.VHeadDim;
        _kvLoraRank = c.KvLoraRank;
        _softmaxScale = softmaxScale.ToScalar();
        if (c.QLoraRank is null)
        {
            _qProj = w.GetLinear($"{p}.q_proj.weight");
        }
        else
        {
            _qAProj = w.GetLinear($"{p}.q_a_proj.weight");
            _qABias = w.GetOptional($"{p}.q_a_proj.bias", c.AttentionBias);
            _qANorm = new RmsNorm(w.Get($"{p}.q_a_layernorm.weight"), c.RmsNormEps);
            _qBProj = w.GetLinear($"{p}.q_b_proj.weight");
        }
        _kvAProj = w.GetLinear($"{p}.kv_a_proj_with_mqa.weight");
        _kvABias = w.GetOptional($"{p}.kv_a_proj_with_mqa.bias", c.AttentionBias);
        _kvANorm = new RmsNorm(w.Get($"{p}.kv_a_layernorm.weight"), c.RmsNormEps);
        _kvBProj = w.Get($"{p}.kv_b_proj.weight");
        _oProj = w.GetLinear($"{p}.o_proj.weight");
        _oBias = w.GetOptional($"{p}.o_proj.bias", c.AttentionBias);
        using (NewDisposeScope())
        {
            var kvB = _kvBProj.view(_heads, _nope + _v, _kvLoraRank);
            _wUK = kvB.narrow(1, 0, _nope).contiguous().DetachFromDisposeScope();
            _wUVt = kvB.narrow(1, _nope, _v).transpose(1, 2).contiguous().DetachFromDisposeScope();
        }
    }

    /// <summary>
    /// Projects hidden states x [N, d] (already input-normed), with its rows' rotary cos/sin [N, rope], into the
    /// query parts and the token latents to cache: qNope [N, H, nope], qRope [N, H, rope] (rotated),
    /// latent [N, kv_lora_rank + rope] = [c_KV normed, k_R rotated].
    /// </summary>
    public (Tensor QNope, Tensor QRope, Tensor Latent) Project(Tensor x, Tensor cos, Tensor sin, YarnRope rope)
    {
        long n = x.shape[0];
        var q = _qProj is not null
            ? _qProj.Forward(x)
            : _qBProj!.Forward(_qANorm!.Forward(_qAProj!.Forward(x, _qABias)));
        q = q.view(n, _heads, _nope + _rope);                          // [N, H, nope+rope]
        var qNope = q.narrow(2, 0, _nope);
        var qRope = rope.Apply(q.narrow(2, _nope, _rope), cos, sin);
        var compressed = _kvAProj.Forward(x, _kvABias);                  // [N, kv_lora_rank + rope]
        var cKV = _kvANorm.Forward(compressed.narrow(1, 0, _kvLoraRank));
        var kRope = rope.Apply(compressed.narrow(1, _kvLoraRank, _rope), cos, sin);
        return (qNope, qRope, cat([cKV, kRope], 1));
    }

    /// <summary>
    /// Naive MLA for n queries at positions [start, start+n) against the sequence's cache [T, latent]
    /// (T = start + n): keys and values are materialised per head from c_KV. Returns [n, H*v].
    /// </summary>
    public Tensor AttendNaive(Tensor qNope, Tensor qRope, Tensor cache, int start)
    {
        long n = qNope.shape[0], t = cache.shape[0];
        var cKV = cache.narrow(1, 0, _kvLoraRank);                       // [T, kvr]
        var kRope = cache.narrow(1, _kvLoraRank, _rope);                 // [T, rope]
        var kv = linear(cKV, _kvBProj).view(t, _heads, _nope + _v);      // [T, H, nope+v]
        var kNope = kv.narrow(2, 0, _nope).permute(1, 2, 0);             // [H, nope, T]
        var values = kv.narrow(2, _nope, _v).transpose(0, 1);            // [H, T, v]
        var scores = qNope.transpose(0, 1).bmm(kNope)                    // [H, n, T]
                     .Add(qRope.transpose(0, 1).matmul(kRope.t()));
        var probs = CausalSoftmax(scores, start, n, t);
        var output = probs.bmm(values);                                  // [H, n, v]
        return output.transpose(0, 1).reshape(n, _heads * _v);
    }

    /// <summary>
    /// Absorbed MLA for n queries against one sequence's cache [T, latent]: scores = (q_nope W_UK) c_KV^T +
    /// q_R k_R^T, output = (softmax · c_KV) W_UV. No per-head key or value is formed. Returns [n, H*v].
    /// </summary>
    public Tensor AttendAbsorbed(Tensor qNope, Tensor qRope, Tensor cache, int start)
    {
        long n = qNope.shape[0], t = cache.shape[0];
        var cKV = cache.narrow(1, 0, _kvLoraRank);                       // [T, kvr]
        var kRope = cache.narrow(1, _kvLoraRank, _rope);                 // [T, rope]
        var qLatent = qNope.transpose(0, 1).bmm(_wUK);                   // [H, n, kvr]
        var scores = qLatent.matmul(cKV.t()).Add(qRope.transpose(0, 1).matmul(kRope.t())); // [H, n, T]
        var probs = CausalSoftmax(scores, start, n, t);
        var outLatent = probs.matmul(cKV);                               // [H, n, kvr]
        var output = outLatent.bmm(_wUVt);                               // [H, n, v]
        return output.transpose(0, 1).reshape(n, _heads * _v);
    }

    /// <summary>
    /// Absorbed MLA for a decode batch: one query per sequence, qNope [B, H, nope], qRope [B, H, rope],
    /// against caches gathered into [B, Tmax, latent]; <paramref name="validMask"/> [B, Tmax] is true at each sequence's
    /// cached positions (the rest is padding up to Tmax and masked out). Returns [B, H*v].
    /// </summary>
    public Tensor AttendAbsorbedBatch(Tensor qNope, Tensor qRope, Tensor caches, Tensor validMask)
    {
        long b = qNope.shape[0];
        var cKV = caches.narrow(2, 0, _kvLoraRank);                      // [B, Tmax, kvr]
        var kRope = caches.narrow(2, _kvLoraRank, _rope);                // [B, Tmax, rope]
        var qLatent = qNope.transpose(0, 1).bmm(_wUK).transpose(0, 1);   // [B, H, kvr]
        var scores = qLatent.bmm(cKV.transpose(1, 2)).Add(qRope.bmm(kRope.transpose(1, 2))); // [B, H, Tmax]
        scores = scores.to(ScalarType.Float32).mul(_softmaxScale);
        scores = scores.masked_fill(validMask.logical_not().unsqueeze(1), Scalars.NegativeInfinity);
        var probs = softmax(scores, -1).to(qNope.dtype);
        var outLatent = probs.bmm(cKV);                                  // [B, H, kvr]
        var output = outLatent.transpose(0, 1).bmm(_wUVt);               // [H, B, v]
        return output.transpose(0, 1).reshape(b, _heads * _v);
    }

    Tensor CausalSoftmax(Tensor scores, int start, long n, long t)
    {
        scores = scores.to(ScalarType.Float32).mul(_softmaxScale);
        if (n > 1 || start + n < t)
        {
            var queryPos = tensor(Positions(start, n), ScalarType.Int64).unsqueeze(1);      // [n, 1]
            var keyPos = tensor(Positions(0, t), ScalarType.Int64).unsqueeze(0);            // [1, T]
            scores = scores.masked_fill(keyPos.gt(queryPos).unsqueeze(0), Scalars.NegativeInfinity);
        }
        return softmax(scores, -1).to(_kvBProj.dtype);
    }

    static long[] Positions(long start, long count)
    {
        var p = new long[count];
        for (long i = 0; i < count; i++) p[i] = start + i;
        return p;
    }

    /// <summary>o_proj: [N, H*v] -> [N, d].</summary>
    public Tensor Output(Tensor attention) => _oProj.Forward(attention, _oBias);

    public void Dispose()
    {
        foreach (var p in new[] { _qProj, _qAProj, _qBProj, _kvAProj, _oProj })
            p?.Dispose();
        foreach (var t in new[] { _qABias, _kvABias, _kvBProj, _wUK, _wUVt, _oBias })
            t?.Dispose();
        _qANorm?.Dispose();
        _kvANorm.Dispose();
        _softmaxScale.Dispose();
    }
}
