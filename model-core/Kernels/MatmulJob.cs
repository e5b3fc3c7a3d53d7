namespace Grid.ModelCore.Kernels;

/// <summary>
/// One small-batch matmul for the kernels: y[m, n] = sum_k x[m, k] * W[n, k] for m &lt; M, n &lt; N, with x [M, K]
/// row-major, y rows <see cref="YStride"/> floats apart, and W either float32 at <see cref="Weights"/>, packed in
/// column panels (<see cref="PackedWeight"/>: [N/32][K][32]), or the 8-bit <see cref="Quantized"/>.
/// </summary>
public readonly unsafe struct MatmulJob
{
    public readonly float* Weights;
    public readonly QuantizedMatrix? Quantized;
    public readonly int N, K, M, YStride;
    public readonly float* X, Y;

    public MatmulJob(float* weights, QuantizedMatrix? quantized, int n, int k, float* x, int m, float* y, int yStride)
    {
        Weights = weights;
        Quantized = quantized;
        N = n;
        K = k;
        X = x;
        M = m;
        Y = y;
        YStride = yStride;
    }
}
