using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// FP8 E4M3 (the "fn" variant of OCP FP8: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
/// 0x7F/0xFF NaN, largest finite 448), as DeepSeek-V3's checkpoints store weights.
/// <para>In registers a code b decodes exactly with two integer operations: the float32 whose bits are
/// <c>(sign-extended b &lt;&lt; 20) &amp; 0x87F00000</c> is the E4M3 value times 2^-120 (subnormal codes become float32
/// subnormals of the same scaled value); one multiply by 2^120 gives the value. The NaN codes are not special-cased there
/// (they come out as ±480): a matrix holding them (<see cref="QuantizedMatrix.HasNaNCodes"/>) is decoded through the table.</para>
/// </summary>
public static class Fp8E4M3
{
    public const float MaxFinite = 448f;
    /// <summary>2^120: what the in-register bit decode must be multiplied by.</summary>
    public static readonly float DecodeFactor = MathF.ScaleB(1f, 120);

    static readonly float[] Table = BuildTable();

    static float[] BuildTable()
    {
        var t = new float[256];
        for (int b = 0; b < 256; b++) t[b] = DecodeSlow((byte)b);
        return t;
    }

    static float DecodeSlow(byte b)
    {
        int sign = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
        if (e == 15 && m == 7) return float.NaN;
        double v = e == 0 ? m * Math.Pow(2, -9) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return (float)(sign == 1 ? -v : v);
    }

    /// <summary>The value of code <paramref name="b"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Decode(byte b) => Table[b];

    /// <summary>Whether the code is NaN (0x7F, 0xFF).</summary>
    public static bool IsNaN(byte b) => (b & 0x7F) == 0x7F;

    /// <summary>The nearest E4M3 code to <paramref name="v"/> (round half to even), saturating at ±448.</summary>
    public static byte Encode(float v)
    {
        if (float.IsNaN(v)) return 0x7F;
        uint bits = BitConverter.SingleToUInt32Bits(v);
        byte sign = (byte)((bits >> 24) & 0x80);
        float a = MathF.Abs(v);
        if (a >= MaxFinite) return (byte)(sign | 0x7E);
        int code;
        if (a < 1f / 64)   // subnormal range: multiples of 2^-9 (code 8 is the smallest normal, 2^-6)
            code = (int)MathF.Round(a * 512, MidpointRounding.ToEven);
        else
        {
            // Round the float32 mantissa to 3 bits (half to even); a carry moves into the exponent by itself.
            uint u = bits & 0x7FFFFFFF;
            u += 0x7FFFF + ((u >> 20) & 1);
            int e = (int)(u >> 23) - 127;                        // -6..8
            code = ((e + 7) << 3) | (int)((u >> 20) & 7);
        }
        return (byte)(sign | Math.Min(code, 0x7E));
    }

    /// <summary>16 codes at <paramref name="codes"/> -> their values times 2^-120 (AVX-512; see the class remarks), exact for
    /// every code but the two NaN codes (0x7F, 0xFF), which come out as ±480 · 2^-120.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector512<float> DecodeScaled16(byte* codes)
    {
        var v = Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)codes));
        return Avx512F.And(Avx512F.ShiftLeftLogical(v, 20), Vector512.Create(unchecked((int)0x87F00000))).AsSingle();
    }

    /// <summary>16 codes -> their values (<see cref="DecodeScaled16"/> times 2^120): <see cref="Decode"/>'s for all but the NaN codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector512<float> Decode16(byte* codes) => DecodeScaled16(codes) * Vector512.Create(DecodeFactor);

    /// <summary>8 codes at <paramref name="codes"/> -> their values times 2^-120 (see the class remarks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector256<float> DecodeScaled8(byte* codes)
    {
        var v = Avx2.ConvertToVector256Int32((sbyte*)codes);
        return Avx2.And(Avx2.ShiftLeftLogical(v, 20), Vector256.Create(unchecked((int)0x87F00000))).AsSingle();
    }
}
