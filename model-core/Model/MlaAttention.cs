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
    readonly int _heads, _nope, _rope, _v, _kvLoraRank, _qLoraRank;
    readonly Scalar _softmaxScale;           // owned for the layer's lifetime (see Scalars)
    // The query and the joint KV compression read the same normed hidden state, so their projections are one matrix,
    // its rows laid out so that every piece of the output is a plain view and all RoPE inputs sit side by side:
    //   q_lora_rank null: [q_nope (H*nope) | c_KV (kv_lora_rank) | q_rope (H*rope) | k_rope (rope)]
    //   q_lora_rank set:  [c_Q (q_lora_rank) | c_KV (kv_lora_rank) | k_rope (rope)], then q_b: [q_nope (H*nope) | q_rope (H*rope)]
    // The checkpoint stores each RoPE block interleaved (x0, y0, x1, y1, ...); its rows are regrouped into halves
    // (x0..x15, y0..y15) here, at load, so the rotation needs no per-step permutation.
    readonly LinearWeight _qkvA;             // [rows above, d]
    readonly Tensor? _qkvABias;              // biases in the same row order (zeros where the checkpoint has none)
    readonly RmsNorm? _qANorm;
    readonly LinearWeight? _qBProj;          // [H*(nope+rope), q_lora_rank], rows regrouped as above
    readonly RmsNorm _kvANorm;
    readonly LinearWeight _kvBProj;          // [H*(nope+v), kv_lora_rank]: packed for the GEMM with the float32 kernels
    readonly Tensor _wUK;                    // [H, nope, kv_lora_rank]   absorbed into queries
    readonly Tensor _wUVt;                   // [H, kv_lora_rank, v]      absorbed into the output
    readonly LinearWeight _oProj;                  // [d, H*v]
    readonly Tensor? _oBias;
    readonly float _softmaxScaleFloat;
    // Decode attention runs the C# kernel (AbsorbedDecodeAttention) over float32 weights when the kernels are on,
    // with W_UK and W_UV packed per head for its GEMMs.
    readonly bool _decodeKernel;
    readonly AbsorbedProjections? _absorbed;
    // Prefill attention (naive form) runs the C# kernel (PrefillAttention) over float32 weights when the kernels are on.
    readonly bool _prefillKernel;
    readonly ScalarType _dtype;

    public MlaAttention(WeightLoader w, int layer, double softmaxScale)
    {
        var c = w.Config;
        var p = TensorNames.Layer(layer) + ".self_attn";
        _heads = c.NumAttentionHeads;
        _nope = c.QkNopeHeadDim;
        _rope = c.QkRopeHeadDim;
        _v = c.VHeadDim;
        _kvLoraRank = c.KvLoraRank;
        _qLoraRank = c.QLoraRank ?? 0;
        _softmaxScale = softmaxScale.ToScalar();
        _softmaxScaleFloat = (float)softmaxScale;
        using (NewDisposeScope())
        {
            // The fused rows regroup an FP8 checkpoint's 128x128 blocks, so without an explicit --quantization they stay
            // in the compute dtype; with one they are quantized after fusing.
            var fusedFormat = w.QuantizationOf($"{p}.kv_a_proj_with_mqa.weight") ?? WeightQuantization.None;
            var kvA = w.Get($"{p}.kv_a_proj_with_mqa.weight");                 // [kv_lora_rank + rope, d]
            var kvABias = w.GetOptional($"{p}.kv_a_proj_with_mqa.bias", c.AttentionBias);
            var kvC = kvA.narrow(0, 0, _kvLoraRank);
            var kR = HalvesRows(kvA.narrow(0, _kvLoraRank, _rope), 1);
            Tensor? qABias = null;
            if (c.QLoraRank is null)
            {
                var q = w.Get($"{p}.q_proj.weight").view(_heads, _nope + _rope, -1); // [H, nope+rope, d]
                var qNope = q.narrow(1, 0, _nope).reshape(_heads * _nope, -1);
                var qRope = HalvesRows(q.narrow(1, _nope, _rope).reshape(_heads * _rope, -1), _heads);
                _qkvA = LinearWeight.Create(cat([qNope, kvC, qRope, kR], 0).DetachFromDisposeScope(), fusedFormat, w.Kernels);
            }
            else
            {
                var qA = w.Get($"{p}.q_a_proj.weight");
                qABias = w.GetOptional($"{p}.q_a_proj.bias", c.AttentionBias);
                _qANorm = new RmsNorm(w.Get($"{p}.q_a_layernorm.weight"), c.RmsNormEps, w.DecodeKernels);
                var qB = w.Get($"{p}.q_b_proj.weight").view(_heads, _nope + _rope, -1);
                _qBProj = LinearWeight.Create(cat([qB.narrow(1, 0, _nope).reshape(_heads * _nope, -1),
                               HalvesRows(qB.narrow(1, _nope, _rope).reshape(_heads * _rope, -1), _heads)], 0).DetachFromDisposeScope(), fusedFormat, w.Kernels);
                _qkvA = LinearWeight.Create(cat([qA, kvC, kR], 0).DetachFromDisposeScope(), fusedFormat, w.Kernels);
            }
            if (kvABias is not null || qABias is not null)
            {
                var dtype = kvA.dtype;
                long qRows = c.QLoraRank ?? (long)_heads * _nope;
                var qPart = qABias ?? zeros(qRows, dtype: dtype);
                var kvBias = kvABias ?? zeros(_kvLoraRank + _rope, dtype: dtype);
                var kvBiasC = kvBias.narrow(0, 0, _kvLoraRank);
                var kvBiasR = HalvesRows(kvBias.narrow(0, _kvLoraRank, _rope).unsqueeze(1), 1).squeeze(1);
                _qkvABias = (c.QLoraRank is null
                    ? cat([qPart, kvBiasC, zeros((long)_heads * _rope, dtype: dtype), kvBiasR], 0)
                    : cat([qPart, kvBiasC, kvBiasR], 0)).DetachFromDisposeScope();
            }
        }
        _kvANorm = new RmsNorm(w.Get($"{p}.kv_a_layernorm.weight"), c.RmsNormEps, w.DecodeKernels);
        _oProj = w.GetLinear($"{p}.o_proj.weight");
        _oBias = w.GetOptional($"{p}.o_proj.bias", c.AttentionBias);
        // The absorbed factors (decode) are copied out of kv_b_proj first; then it is packed for the prefill expansion
        // (float32 with the kernels; the dense matrix is dropped) or kept as it is.
        var kvBProj = w.Get($"{p}.kv_b_proj.weight");
        using (NewDisposeScope())
        {
            var kvB = kvBProj.view(_heads, _nope + _v, _kvLoraRank);
            _wUK = kvB.narrow(1, 0, _nope).contiguous().DetachFromDisposeScope();
            _wUVt = kvB.narrow(1, _nope, _v).transpose(1, 2).contiguous().DetachFromDisposeScope();
        }
        _dtype = kvBProj.dtype;
        _kvBProj = LinearWeight.Create(kvBProj, WeightQuantization.None, w.Kernels && w.PrefillAttentionKernel);
        _decodeKernel = w.DecodeKernels && _dtype == ScalarType.Float32;
        if (_decodeKernel)
            using (NewDisposeScope())
            {
                var wUK = _wUK.transpose(1, 2).contiguous();                 // [H, kvr, nope]
                var wUV = _wUVt.transpose(1, 2).contiguous();                // [H, v, kvr]
                unsafe
                {
                    _absorbed = new AbsorbedProjections(TensorMemory.Pointer<float>(wUK), TensorMemory.Pointer<float>(wUV), _heads, _nope, _kvLoraRank, _v);
                }
            }
        _prefillKernel = w.Kernels && w.PrefillAttentionKernel && _kvBProj.IsFloat32;
    }

    /// <summary>
    /// Rows of <paramref name="blocks"/> consecutive RoPE blocks [blocks*rope, ...] regrouped from the checkpoint's
    /// interleaved order (x0, y0, x1, y1, ...) into halves (x0, x1, ..., y0, y1, ...), as the reference's
    /// de-interleave does to the projected vector: an exact permutation of rows.
    /// </summary>
    Tensor HalvesRows(Tensor rows, long blocks)
    {
        var shape = rows.shape;
        var rest = shape[1..];
        return rows.reshape([blocks, _rope / 2, 2, .. rest]).transpose(1, 2).reshape(shape);
    }

    /// <summary>
    /// Projects hidden states x [N, d] (already input-normed), with its rows' rotary cos and signed sin [N, 1, rope]
    /// (<see cref="StepBatch.Rotary"/>), into the query parts and the token latents to cache: qNope [N, H, nope],
    /// qRope [N, H, rope] (rotated), latent [N, kv_lora_rank + rope] = [c_KV normed, k_R rotated]. One matmul for
    /// the query and the KV compression together, one rotation for every RoPE input of the layer.
    /// </summary>
    public (Tensor QNope, Tensor QRope, Tensor Latent) Project(Tensor x, Tensor cos, Tensor sin, YarnRope rope)
    {
        long n = x.shape[0];
        if (_decodeKernel && _qLoraRank == 0 && _kvANorm.UseKernels && x.dtype == ScalarType.Float32 && cos.dtype == ScalarType.Float32 && n > 0)
            return ProjectInPlace(x, cos, sin);
        var fused = _qkvA.Forward(x, _qkvABias);
        long qRows = _qLoraRank > 0 ? _qLoraRank : (long)_heads * _nope;
        var cKV = _kvANorm.Forward(fused.narrow(1, qRows, _kvLoraRank));
        Tensor qNope, qRope, kRope;
        if (_qLoraRank == 0)
        {
            // q_rope and k_rope are adjacent: [N, (H+1)*rope] rotated at once as H+1 heads.
            var rotated = rope.Apply(fused.narrow(1, qRows + _kvLoraRank, (_heads + 1L) * _rope).view(n, _heads + 1, _rope), cos, sin);
            qNope = fused.narrow(1, 0, qRows).view(n, _heads, _nope);
            qRope = rotated.narrow(1, 0, _heads);
            kRope = rotated.select(1, _heads);
        }
        else
        {
            var q = _qBProj!.Forward(_qANorm!.Forward(fused.narrow(1, 0, qRows)));       // [N, H*nope | H*rope]
            qNope = q.narrow(1, 0, (long)_heads * _nope).view(n, _heads, _nope);
            qRope = rope.Apply(q.narrow(1, (long)_heads * _nope, (long)_heads * _rope).view(n, _heads, _rope), cos, sin);
            kRope = rope.Apply(fused.narrow(1, qRows + _kvLoraRank, _rope).view(n, 1, _rope), cos, sin).select(1, 0);
        }
        return (qNope, qRope, cat([cKV, kRope], 1));
    }

    /// <summary>
    /// <see cref="Project"/> without query compression, float32 with the row kernels: after the fused matmul, one C#
    /// pass normalises c_KV into the latent row and rotates every RoPE input (H query heads and k_R) straight out of
    /// the projection's rows, as <see cref="YarnRope.Apply"/> computes it (x·cos + halves-swapped x·signed sin), row by
    /// row: the same bits in decode and prefill. Replaces a copy, the norm, five RoPE ops and a <c>cat</c>.
    /// </summary>
    unsafe (Tensor QNope, Tensor QRope, Tensor Latent) ProjectInPlace(Tensor x, Tensor cos, Tensor sin)
    {
        long n = x.shape[0];
        var fused = _qkvA.Forward(x, _qkvABias).contiguous();          // [N, H*nope | kvr | H*rope | rope]
        long width = fused.shape[1], qRows = (long)_heads * _nope, latentDim = _kvLoraRank + _rope;
        var latent = empty(n, latentDim, ScalarType.Float32);          // [N, c_KV normed | k_R rotated]
        var qRope = empty(n, _heads, _rope, ScalarType.Float32);       // [N, H, rope] rotated
        var c = cos.contiguous();
        var s = sin.contiguous();
        if (c.shape[0] != n || c.NumberOfElements != n * _rope || s.NumberOfElements != n * _rope)
            throw new ArgumentException("cos and sin need [N, 1, rope]");
        float* f = TensorMemory.Pointer<float>(fused), lat = TensorMemory.Pointer<float>(latent), qr = TensorMemory.Pointer<float>(qRope);
        float* cp = TensorMemory.Pointer<float>(c), sp = TensorMemory.Pointer<float>(s);
        _kvANorm.ForwardRows(f + qRows, width, lat, latentDim, (int)n);
        int half = _rope / 2;
        for (long r = 0; r < n; r++)
        {
            float* ropeIn = f + r * width + qRows + _kvLoraRank, cr = cp + r * _rope, sr = sp + r * _rope;
            for (int h = 0; h <= _heads; h++)
            {
                float* xin = ropeIn + (long)h * _rope;
                float* y = h < _heads ? qr + (r * _heads + h) * _rope : lat + r * latentDim + _kvLoraRank;
                for (int i = 0; i < _rope; i++)
                    y[i] = xin[i] * cr[i] + xin[i < half ? i + half : i - half] * sr[i];
            }
        }
        return (fused.narrow(1, 0, qRows).view(n, _heads, _nope), qRope, latent);
    }

    /// <summary>
    /// Naive MLA for n queries at positions [start, start+n) against the sequence's cache [T, latent]
    /// (T = start + n): keys and values are materialised per head from c_KV. Returns [n, H*v]. Float32 with the
    /// kernels: the expansion through the batch-invariant GEMM and the C# kernel (<see cref="AttendPrefill"/>);
    /// otherwise libtorch (<see cref="AttendNaiveLibtorch"/>).
    /// </summary>
    public Tensor AttendNaive(Tensor qNope, Tensor qRope, Tensor cache, int start) =>
        PrefillKernel(qNope) ? AttendPrefill(qNope, qRope, cache, start) : AttendNaiveLibtorch(qNope, qRope, cache, start);

    /// <summary>Whether <see cref="AttendNaive"/> runs the C# kernel: float32 weights and queries with the kernels on.</summary>
    public bool PrefillKernel(Tensor qNope) => _prefillKernel && qNope.dtype == ScalarType.Float32;

    /// <summary>
    /// <see cref="AttendNaive"/> through C#: kv = c_KV W_kvbᵀ [T, H*(nope+v)] by the batch-invariant GEMM, then causal
    /// attention per head over the keys each query sees (<see cref="PrefillAttention"/>): a query row's output depends on
    /// its query and the cached rows 0..its position only, so one chunk or several give the same bits. Returns [n, H*v].
    /// </summary>
    public unsafe Tensor AttendPrefill(Tensor qNope, Tensor qRope, Tensor cache, int start)
    {
        if (!PrefillKernel(qNope)) throw new InvalidOperationException("the prefill attention kernel takes float32 weights and queries");
        long n = qNope.shape[0], t = cache.shape[0];
        if (t < start + n || n < 1 || start < 0) throw new ArgumentException("the cache holds the chunk's positions 0..start+n-1");
        var seen = cache.narrow(0, 0, start + n);                        // [start+n, latent]: the rows the queries see
        var latent = seen.dtype == ScalarType.Float32 ? seen.contiguous() : seen.to(ScalarType.Float32).contiguous();
        var cKV = latent.narrow(1, 0, _kvLoraRank).contiguous();         // [T, kvr]
        int rows = start + (int)n, width = _heads * (_nope + _v);
        float* kv = PrefillAttention.ExpansionBuffer((long)rows * width);   // [T, H*(nope+v)], reused across calls
        InvariantGemm.Run(_kvBProj.Job(TensorMemory.Pointer<float>(cKV), rows, kv, width));
        var qn = qNope.contiguous();
        var qr = qRope.contiguous();
        var output = empty(n, (long)_heads * _v, ScalarType.Float32);
        float* lat = TensorMemory.Pointer<float>(latent);
        PrefillAttention.Run(TensorMemory.Pointer<float>(qn), TensorMemory.Pointer<float>(qr), kv,
            lat + _kvLoraRank, latent.shape[1], (int)n, start, _heads, _nope, _rope, _v, _softmaxScaleFloat,
            TensorMemory.Pointer<float>(output), InvariantGemm.BestPath);
        return output;
    }

    /// <summary><see cref="AttendNaive"/> through libtorch ops (bf16, kernels off, comparisons).</summary>
    public Tensor AttendNaiveLibtorch(Tensor qNope, Tensor qRope, Tensor cache, int start)
    {
        long n = qNope.shape[0], t = cache.shape[0];
        var cKV = cache.narrow(1, 0, _kvLoraRank);                       // [T, kvr]
        var kRope = cache.narrow(1, _kvLoraRank, _rope);                 // [T, rope]
        var kv = _kvBProj.Forward(cKV).view(t, _heads, _nope + _v);      // [T, H, nope+v]
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
    /// against caches gathered into [B, Tmax, latent]; <paramref name="maskedOut"/> [B, 1, Tmax] is true at the padding
    /// up to Tmax (null when every sequence fills Tmax). Returns [B, H*v].
    /// </summary>
    public Tensor AttendAbsorbedBatch(Tensor qNope, Tensor qRope, Tensor caches, Tensor? maskedOut)
    {
        long b = qNope.shape[0];
        var cKV = caches.narrow(2, 0, _kvLoraRank);                      // [B, Tmax, kvr]
        var qLatent = qNope.transpose(0, 1).bmm(_wUK).transpose(0, 1);   // [B, H, kvr]
        // [q_latent | q_R] against the cached [c_KV | k_R] rows: both score terms in one matmul over the whole latent.
        var scores = cat([qLatent, qRope], 2).bmm(caches.transpose(1, 2)); // [B, H, Tmax]
        scores = scores.to(ScalarType.Float32).mul(_softmaxScale);
        if (maskedOut is not null) scores = scores.masked_fill(maskedOut, Scalars.NegativeInfinity);
        var probs = softmax(scores, -1).to(qNope.dtype);
        var outLatent = probs.bmm(cKV);                                  // [B, H, kvr]
        var output = outLatent.transpose(0, 1).bmm(_wUVt);               // [H, B, v]
        return output.transpose(0, 1).reshape(b, _heads * _v);
    }

    /// <summary>Whether <see cref="AttendDecode"/> can run: float32 weights and queries with the kernels on.</summary>
    public bool DecodeKernel(Tensor qNope) => _decodeKernel && qNope.dtype == ScalarType.Float32;

    /// <summary>
    /// Decode attention for one query per sequence (as <see cref="AttendAbsorbedBatch"/>) over the cached rows where they
    /// lie: <paramref name="pool"/> [rows, latent] float32, sequence b's position t at row <paramref name="rows"/>[b * tmax + t]
    /// for t &lt; <paramref name="lengths"/>[b]. One C# call (<see cref="AbsorbedDecodeAttention"/>) instead of a gather and
    /// about a dozen libtorch ops; each sequence is computed over its own positions only (the same bits alone or in any
    /// batch). Returns [B, H*v].
    /// </summary>
    public Tensor AttendDecode(Tensor qNope, Tensor qRope, Tensor pool, long[] rows, int[] lengths, int tmax)
    {
        if (!DecodeKernel(qNope) || pool.dtype != ScalarType.Float32 || pool.shape[1] != _kvLoraRank + _rope)
            throw new InvalidOperationException("the decode attention kernel takes float32 weights, queries and cache rows");
        long b = qNope.shape[0];
        var qn = qNope.contiguous();
        var qr = qRope.contiguous();
        var output = empty(b, (long)_heads * _v, ScalarType.Float32);
        long capacity = pool.shape[0];
        for (int i = 0; i < lengths.Length; i++)
            for (int t = 0; t < lengths[i]; t++)
                if ((ulong)rows[(long)i * tmax + t] >= (ulong)capacity) throw new ArgumentOutOfRangeException(nameof(rows), "a cache row lies outside the pool");
        unsafe
        {
            AbsorbedDecodeAttention.Run(TensorMemory.Pointer<float>(qn), TensorMemory.Pointer<float>(qr), TensorMemory.Pointer<float>(pool),
                rows, lengths, tmax, _absorbed!, _heads, _rope, _softmaxScaleFloat, TensorMemory.Pointer<float>(output));
        }
        return output;
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
        return softmax(scores, -1).to(_dtype);
    }

    static long[] Positions(long start, long count)
    {
        var p = new long[count];
        for (long i = 0; i < count; i++) p[i] = start + i;
        return p;
    }

    /// <summary>Bytes of its weights, as stored (kv_b_proj counted with its two absorbed copies, and their packed copies for the decode kernel).</summary>
    public long Bytes => _qkvA.Bytes + (_qBProj?.Bytes ?? 0) + _oProj.Bytes + _kvBProj.Bytes + (_qANorm?.Bytes ?? 0) + _kvANorm.Bytes
        + new[] { _qkvABias, _wUK, _wUVt, _oBias }.Sum(Runtime.WeightBytes.Of) + (_absorbed?.Bytes ?? 0);

    /// <summary>o_proj: [N, H*v] -> [N, d].</summary>
    public Tensor Output(Tensor attention) => _oProj.Forward(attention, _oBias);

    public void Dispose()
    {
        foreach (var p in new[] { _qkvA, _qBProj, _oProj, _kvBProj })
            p?.Dispose();
        foreach (var t in new[] { _qkvABias, _wUK, _wUVt, _oBias })
            t?.Dispose();
        _qANorm?.Dispose();
        _kvANorm.Dispose();
        _absorbed?.Dispose();
        _softmaxScale.Dispose();
    }
}
