using Grid.ModelCore.Config;
using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>
/// Decoupled rotary position embedding for the <c>qk_rope_head_dim</c> part of queries and the shared key,
/// with YaRN context extension (NTK-by-parts frequency blend and the cos/sin magnitude correction) or
/// linear position interpolation, as <c>rope_scaling</c> says. Frequencies are computed in double precision.
/// </summary>
public sealed class YarnRope : IDisposable
{
    readonly int _dim;
    readonly double[] _invFreq;           // [dim/2]
    readonly double _positionScale;       // 1/factor for linear scaling, else 1
    readonly ScalarType _dtype;
    Tensor _cos, _sin;                    // [capacity, dim]: cos twice; sin signed for the halves layout (-sin | +sin)
    int _capacity;

    /// <summary>Scale applied to cos and sin (YaRN: mscale / mscale_all_dim), 1 otherwise.</summary>
    public double CosSinScale { get; }

    /// <summary>The attention softmax scale: q_head_dim^-0.5, times mscale(mscale_all_dim)^2 under rope scaling.</summary>
    public double SoftmaxScale { get; }

    public YarnRope(ModelConfig config, ScalarType dtype)
    {
        _dim = config.QkRopeHeadDim;
        _dtype = dtype;
        double theta = config.RopeTheta;
        var rs = config.RopeScaling;
        int half = _dim / 2;
        var freqExtra = new double[half];
        for (int i = 0; i < half; i++) freqExtra[i] = 1.0 / Math.Pow(theta, 2.0 * i / _dim);
        _invFreq = freqExtra;
        _positionScale = 1.0;
        CosSinScale = 1.0;
        SoftmaxScale = Math.Pow(config.QHeadDim, -0.5);
        if (rs is not null)
        {
            if (rs.MscaleAllDim != 0)
            {
                double m = YarnMscale(rs.Factor, rs.MscaleAllDim);
                SoftmaxScale *= m * m;
            }
            if (rs.Type == "linear")
            {
                _positionScale = 1.0 / rs.Factor;
            }
            else if (rs.Type == "yarn")
            {
                var (low, high) = CorrectionRange(rs.BetaFast, rs.BetaSlow, _dim, theta, rs.OriginalMaxPositionEmbeddings);
                _invFreq = new double[half];
                for (int i = 0; i < half; i++)
                {
                    double freqInter = freqExtra[i] / rs.Factor;
                    double ramp = Math.Clamp((i - low) / (high == low ? high + 0.001 - low : high - low), 0.0, 1.0);
                    double extrapolationMask = 1.0 - ramp;
                    _invFreq[i] = freqInter * (1 - extrapolationMask) + freqExtra[i] * extrapolationMask;
                }
                CosSinScale = YarnMscale(rs.Factor, rs.Mscale) / YarnMscale(rs.Factor, rs.MscaleAllDim);
            }
        }
        _cos = empty(0, _dim, _dtype).DetachFromDisposeScope();
        _sin = empty(0, _dim, _dtype).DetachFromDisposeScope();
    }

    static double YarnMscale(double scale, double mscale) => scale <= 1 ? 1.0 : 0.1 * mscale * Math.Log(scale) + 1.0;

    static double CorrectionDim(double rotations, int dim, double theta, int maxPositions) =>
        dim * Math.Log(maxPositions / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));

    static (double Low, double High) CorrectionRange(double betaFast, double betaSlow, int dim, double theta, int maxPositions)
    {
        double low = Math.Floor(CorrectionDim(betaFast, dim, theta, maxPositions));
        double high = Math.Ceiling(CorrectionDim(betaSlow, dim, theta, maxPositions));
        return (Math.Max(low, 0), Math.Min(high, dim - 1));
    }

    void EnsureCapacity(long positions)
    {
        if (positions <= _capacity) return;
        int capacity = (int)Math.Max(positions, Math.Max(256, 2L * _capacity));
        int half = _dim / 2;
        var cos = new float[capacity * _dim];
        var sin = new float[capacity * _dim];
        for (int t = 0; t < capacity; t++)
            for (int i = 0; i < half; i++)
            {
                double angle = t * _positionScale * _invFreq[i];
                float c = (float)(Math.Cos(angle) * CosSinScale), s = (float)(Math.Sin(angle) * CosSinScale);
                cos[t * _dim + i] = cos[t * _dim + half + i] = c;
                sin[t * _dim + i] = -s;
                sin[t * _dim + half + i] = s;
            }
        _cos.Dispose();
        _sin.Dispose();
        using (NewDisposeScope())
        {
            _cos = tensor(cos, [capacity, _dim]).to(_dtype).DetachFromDisposeScope();
            _sin = tensor(sin, [capacity, _dim]).to(_dtype).DetachFromDisposeScope();
        }
        _capacity = capacity;
    }

    /// <summary>
    /// cos and signed sin [N, 1, dim] for rows at <paramref name="positions"/> [N] (broadcast over heads); gathered once
    /// per step (<see cref="StepBatch.Rotary"/>) and used by every layer.
    /// </summary>
    public (Tensor Cos, Tensor Sin) Table(Tensor positions, long maxPosition)
    {
        EnsureCapacity(maxPosition + 1);
        return (_cos.index_select(0, positions).unsqueeze(1), _sin.index_select(0, positions).unsqueeze(1));
    }

    /// <summary>
    /// Rotates <paramref name="x"/> [N, heads, dim], whose rope dims are already in halves order (x0..x15, y0..y15: the
    /// checkpoint's interleaved rows are regrouped at load, see <see cref="MlaAttention"/>), with the rows' cos and signed
    /// sin [N, 1, dim] from <see cref="Table"/>: x * cos + rotate_half(x) * sin, where rotate_half(x) * sin is the halves
    /// swapped times (-sin | +sin). Three libtorch ops.
    /// </summary>
    public Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        var shape = x.shape;
        var swapped = x.reshape(shape[0], shape[1], 2, _dim / 2).flip(2).view(shape);
        return x.mul(cos).addcmul_(swapped, sin, Scalars.One);
    }

    public void Dispose()
    {
        _cos.Dispose();
        _sin.Dispose();
    }
}
