using System.Numerics;
using System.Runtime.CompilerServices;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Small per-row float32 operations of the decoder over plain memory, run in C# instead of as several libtorch calls
/// (each a parallel region both threads must enter): RMSNorm and the SwiGLU activation. Every row is computed alone in
/// one fixed order whatever the number of rows, so a row's result is the same bits in decode, in a decode batch and in
/// a prefill chunk. Blocks of rows are spread over the cores only for large row counts.
/// </summary>
public static unsafe class RowKernels
{
    /// <summary>Rows per work item when a call has enough rows to split.</summary>
    const int BlockRows = 32;

    /// <summary>
    /// RMSNorm y[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps)) for <paramref name="rows"/> rows of <paramref name="d"/>
    /// elements (rows <paramref name="xStride"/> and <paramref name="yStride"/> floats apart). The sum of squares runs over
    /// <see cref="Vector{T}"/> lanes in increasing index, then a fixed lane sum.
    /// </summary>
    public static void RmsNorm(float* x, long xStride, float* weight, int d, float eps, float* y, long yStride, int rows)
    {
        if (rows <= BlockRows)
        {
            for (int r = 0; r < rows; r++) RmsNormRow(x + r * xStride, weight, d, eps, y + r * yStride);
            return;
        }
        KernelParallel.For((rows + BlockRows - 1) / BlockRows, block =>
        {
            int end = Math.Min(rows, (block + 1) * BlockRows);
            for (int r = block * BlockRows; r < end; r++) RmsNormRow(x + r * xStride, weight, d, eps, y + r * yStride);
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void RmsNormRow(float* x, float* w, int d, float eps, float* y)
    {
        float inverse = 1f / MathF.Sqrt(SumOfSquares(x, d) / d + eps);
        int i = 0;
        var scale = new Vector<float>(inverse);
        for (; i <= d - Vector<float>.Count; i += Vector<float>.Count)
            Store(y + i, Load(w + i) * (Load(x + i) * scale));
        for (; i < d; i++) y[i] = w[i] * (x[i] * inverse);
    }

    /// <summary>Σ x[i]² over <see cref="Vector{T}"/> lanes (lane j sums i ≡ j), the tail as one more partial lane step, then the lanes in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float SumOfSquares(float* x, int n)
    {
        var acc = Vector<float>.Zero;
        int i = 0;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
        {
            var v = Load(x + i);
            acc += v * v;
        }
        float sum = Vector.Sum(acc);
        for (; i < n; i++) sum += x[i] * x[i];
        return sum;
    }

    /// <summary>Dot product of <paramref name="n"/> floats: <see cref="Vector{T}"/> lanes in increasing index, the lane sum, then the tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Dot(float* a, float* b, int n)
    {
        var acc = Vector<float>.Zero;
        int i = 0;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
            acc += Load(a + i) * Load(b + i);
        float sum = Vector.Sum(acc);
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>y[i] += a * x[i] for i &lt; n.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Axpy(float a, float* x, float* y, int n)
    {
        var va = new Vector<float>(a);
        int i = 0;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
            Store(y + i, Load(y + i) + va * Load(x + i));
        for (; i < n; i++) y[i] += a * x[i];
    }

    /// <summary>
    /// The SwiGLU activation act[r] = silu(gate[r]) * up[r] for rows of the stacked gate/up projection
    /// gateUp [rows, 2*inter] (gate first): silu(g) = g / (1 + e^-g), as the grouped experts compute it.
    /// </summary>
    public static void SiluTimesUp(float* gateUp, int inter, float* act, int rows)
    {
        long n = (long)rows * inter;
        if (n <= 1 << 16)
        {
            for (int r = 0; r < rows; r++) SiluRow(gateUp + (long)r * 2 * inter, inter, act + (long)r * inter);
            return;
        }
        KernelParallel.For((rows + BlockRows - 1) / BlockRows, block =>
        {
            int end = Math.Min(rows, (block + 1) * BlockRows);
            for (int r = block * BlockRows; r < end; r++) SiluRow(gateUp + (long)r * 2 * inter, inter, act + (long)r * inter);
        });
    }

    /// <summary>
    /// One row: <see cref="Vector.Exp(Vector{float})"/> over whole vectors, and the tail through one zero-padded vector,
    /// so every element goes through the same function wherever it lies.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void SiluRow(float* gate, int inter, float* act)
    {
        float* up = gate + inter;
        int i = 0;
        for (; i <= inter - Vector<float>.Count; i += Vector<float>.Count)
            Store(act + i, Silu(Load(gate + i)) * Load(up + i));
        if (i == inter) return;
        int tail = inter - i;
        float* padded = stackalloc float[Vector<float>.Count];
        new Span<float>(padded, Vector<float>.Count).Clear();
        Buffer.MemoryCopy(gate + i, padded, tail * sizeof(float), tail * sizeof(float));
        var silu = Silu(Load(padded));
        Store(padded, silu);
        for (int j = 0; j < tail; j++) act[i + j] = padded[j] * up[i + j];
    }

    /// <summary>silu(g) = g / (1 + e^-g), lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<float> Silu(Vector<float> g) => g / (Vector<float>.One + Vector.Exp(-g));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<float> Load(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* p, Vector<float> v) => Unsafe.WriteUnaligned(p, v);
}
