using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Grid.ModelCore.Kernels;
using static TorchSharp.torch;

namespace Grid.ModelCore.Cache;

/// <summary>How latent-cache rows are stored (<c>--kv-cache-dtype</c>, named as vLLM names it).</summary>
public enum KvCacheDtype
{
    /// <summary>The compute dtype (float32 unless --dtype says otherwise).</summary>
    Auto,
    /// <summary>c_KV as int8 codes with a per-token scale (absmax / 127); k_R as float16 (see <see cref="LatentRowCodec"/>).</summary>
    Int8,
    /// <summary>c_KV as FP8 E4M3 codes with a per-token scale (absmax / 448); k_R as float16 (see <see cref="LatentRowCodec"/>).</summary>
    Fp8,
}

public static class KvCacheDtypeNames
{
    public static readonly string[] Names = ["auto", "int8", "fp8"];

    public static KvCacheDtype Parse(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "" or "auto" => KvCacheDtype.Auto,
        "int8" => KvCacheDtype.Int8,
        "fp8" or "fp8_e4m3" => KvCacheDtype.Fp8,
        _ => throw new ArgumentException($"kv cache dtype '{name}' is not supported (auto, int8, fp8)"),
    };

    public static string Name(this KvCacheDtype d) => d switch
    {
        KvCacheDtype.Int8 => "int8",
        KvCacheDtype.Fp8 => "fp8",
        _ => "auto",
    };
}

/// <summary>
/// The compressed form of one latent-cache row: the token's c_KV (kv_lora_rank values) as int8 or FP8 E4M3 codes, its
/// rotated shared key k_R (qk_rope_head_dim values) as float16, then two float32 scales, c_KV's (absmax over the code
/// range) and k_R's (absmax; k_R / scale lies in [-1, 1], so float16's range can never overflow). A row is
/// <see cref="RowBytes"/> = kv_lora_rank + 2 x rope + 8 bytes, against 4 x latentDim in float32.
/// k_R keeps 11 significant bits because 8 bits cost too much there: on a trained checkpoint (tests/fixtures/trained_lite)
/// rounding k_R alone to int8 costs 1.85e-3 nats/token, c_KV alone 5.5e-4, while on random weights k_R cost 7.9e-5: a
/// trained model puts its position signal into few of k_R's rotary frequencies, and one int8 scale per token leaves the
/// others a handful of codes. k_R is 1/9 of the row (32 of 288 values on the benchmark model, 64 of 576 on DeepSeek-V2).
/// Rows are encoded when written and decoded to float when the attention gathers them (on CPU a float copy of the
/// gathered rows is what the attention's matmuls read).
/// </summary>
public sealed unsafe class LatentRowCodec
{
    public KvCacheDtype Format { get; }
    public int LatentDim { get; }
    /// <summary>First column of k_R (= kv_lora_rank).</summary>
    public int RopeStart { get; }
    int RopeDim => LatentDim - RopeStart;
    /// <summary>Byte offset of the two float32 scales in a row.</summary>
    int ScalesAt => RopeStart + RopeDim * sizeof(ushort);
    public int RowBytes => ScalesAt + 2 * sizeof(float);

    public LatentRowCodec(KvCacheDtype format, int latentDim, int ropeStart)
    {
        if (format == KvCacheDtype.Auto) throw new ArgumentException("auto rows are stored in the compute dtype, without a codec");
        if (ropeStart <= 0 || ropeStart >= latentDim) throw new ArgumentOutOfRangeException(nameof(ropeStart));
        Format = format;
        LatentDim = latentDim;
        RopeStart = ropeStart;
    }

    float MaxCode => Format == KvCacheDtype.Int8 ? 127f : Fp8E4M3.MaxFinite;

    /// <summary>latents [n, LatentDim] (any float dtype) -> encoded rows [n, RowBytes] (uint8).</summary>
    public Tensor Encode(Tensor latents)
    {
        var src = latents.dtype == ScalarType.Float32 ? latents.contiguous() : latents.to(ScalarType.Float32).contiguous();
        long n = latents.shape[0];
        var rows = empty([n, RowBytes], ScalarType.Byte);
        if (n == 0) return rows;
        float* s = TensorMemory.Pointer<float>(src);
        byte* d = TensorMemory.Pointer<byte>(rows);
        for (long r = 0; r < n; r++)
        {
            float* row = s + r * LatentDim;
            byte* outRow = d + r * RowBytes;
            float* scales = (float*)(outRow + ScalesAt);
            scales[0] = EncodePart(row, outRow, 0, RopeStart);
            scales[1] = EncodeRope(row + RopeStart, (Half*)(outRow + RopeStart));
        }
        return rows;
    }

    float EncodePart(float* row, byte* codes, int from, int to)
    {
        float amax = 0;
        for (int i = from; i < to; i++) amax = MathF.Max(amax, MathF.Abs(row[i]));
        float scale = amax / MaxCode, inv = scale > 0 ? 1f / scale : 0f;
        if (Format == KvCacheDtype.Int8)
            for (int i = from; i < to; i++) codes[i] = (byte)(sbyte)Math.Clamp((int)MathF.Round(row[i] * inv, MidpointRounding.ToEven), -127, 127);
        else
            for (int i = from; i < to; i++) codes[i] = Fp8E4M3.Encode(row[i] * inv);
        return scale;
    }

    /// <summary>k_R / absmax as float16 (round to nearest even); returns the scale.</summary>
    float EncodeRope(float* kR, Half* codes)
    {
        float amax = 0;
        for (int i = 0; i < RopeDim; i++) amax = MathF.Max(amax, MathF.Abs(kR[i]));
        float inv = amax > 0 ? 1f / amax : 0f;
        for (int i = 0; i < RopeDim; i++) codes[i] = (Half)(kR[i] * inv);
        return amax;
    }

    /// <summary>Encoded rows [n, RowBytes] -> latents [n, LatentDim] in <paramref name="dtype"/>.</summary>
    public Tensor Decode(Tensor rows, ScalarType dtype)
    {
        var src = rows.contiguous();
        long n = rows.shape[0];
        var latents = empty([n, LatentDim], ScalarType.Float32);
        if (n > 0)
        {
            byte* s = TensorMemory.Pointer<byte>(src);
            float* d = TensorMemory.Pointer<float>(latents);
            const int RowsPerItem = 256;
            KernelParallel.For((int)((n + RowsPerItem - 1) / RowsPerItem), item =>
            {
                for (long r = (long)item * RowsPerItem, end = Math.Min(n, r + RowsPerItem); r < end; r++)
                {
                    byte* row = s + r * RowBytes;
                    float* scales = (float*)(row + ScalesAt), dst = d + r * LatentDim;
                    DecodePart(row, dst, 0, RopeStart, scales[0]);
                    Half* kR = (Half*)(row + RopeStart);
                    for (int i = 0; i < RopeDim; i++) dst[RopeStart + i] = (float)kR[i] * scales[1];
                }
            });
        }
        return dtype == ScalarType.Float32 ? latents : latents.to(dtype);
    }

    void DecodePart(byte* codes, float* dst, int from, int to, float scale)
    {
        int i = from;
        if (Avx2.IsSupported)
        {
            if (Format == KvCacheDtype.Int8)
            {
                var s = Vector256.Create(scale);
                for (; i <= to - 8; i += 8)
                    Avx.Store(dst + i, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)codes + i)), s));
            }
            else
            {
                var f = Vector256.Create(Fp8E4M3.DecodeFactor);
                var s = Vector256.Create(scale);
                for (; i <= to - 8; i += 8)
                    Avx.Store(dst + i, Avx.Multiply(Avx.Multiply(Fp8E4M3.DecodeScaled8(codes + i), f), s));
            }
        }
        if (Format == KvCacheDtype.Int8)
            for (; i < to; i++) dst[i] = (sbyte)codes[i] * scale;
        else
            for (; i < to; i++) dst[i] = Fp8E4M3.Decode(codes[i]) * scale;
    }
}
