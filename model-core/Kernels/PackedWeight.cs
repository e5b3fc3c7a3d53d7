using System.Runtime.InteropServices;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// A float32 weight W [N, K] (y = x Wᵀ) packed for <see cref="InvariantGemm"/> into column panels of
/// <see cref="PanelWidth"/> outputs: panel p holds Wᵀ[:, p·32 .. p·32 + 32) as [K][32] contiguous floats, so the
/// micro-kernel reads one 128-byte row of the panel per k. The last panel is padded with zeros. Native, 64-byte aligned
/// memory that never moves; it replaces the [N, K] tensor (no second copy). Kernels read it from any thread.
/// </summary>
public sealed unsafe class PackedWeight : IDisposable
{
    /// <summary>Outputs per panel (two AVX-512 or four AVX2 registers).</summary>
    public const int PanelWidth = 32;

    float* _data;

    /// <summary>N: outputs (rows of W).</summary>
    public int Rows { get; }
    /// <summary>K: inputs (columns of W).</summary>
    public int Cols { get; }
    public int Panels => (Rows + PanelWidth - 1) / PanelWidth;
    public long Bytes => (long)Panels * PanelWidth * Cols * sizeof(float);

    /// <summary>The first panel; panel p starts p · K · 32 floats further.</summary>
    public float* Data => _data != null ? _data : throw new ObjectDisposedException(nameof(PackedWeight));

    PackedWeight(int rows, int cols)
    {
        if (rows < 1 || cols < 1) throw new ArgumentException("a packed weight needs at least one row and one column");
        Rows = rows;
        Cols = cols;
        _data = (float*)NativeMemory.AlignedAlloc((nuint)Bytes, 64);
    }

    /// <summary>Packs W [rows, cols] row-major at <paramref name="w"/> (the source is only read).</summary>
    public static PackedWeight Pack(float* w, int rows, int cols)
    {
        var packed = new PackedWeight(rows, cols);
        float* data = packed._data;
        KernelParallel.For(packed.Panels, p =>
        {
            float* panel = data + (long)p * cols * PanelWidth;
            for (int j = 0; j < PanelWidth; j++)
            {
                int n = p * PanelWidth + j;
                if (n < rows)
                {
                    float* row = w + (long)n * cols;
                    for (int k = 0; k < cols; k++) panel[(long)k * PanelWidth + j] = row[k];
                }
                else
                    for (int k = 0; k < cols; k++) panel[(long)k * PanelWidth + j] = 0f;
            }
        });
        return packed;
    }

    /// <summary>Writes W [Rows, Cols] row-major to <paramref name="w"/>.</summary>
    public void Unpack(float* w)
    {
        float* data = Data;
        int rows = Rows, cols = Cols;
        KernelParallel.For(Panels, p =>
        {
            float* panel = data + (long)p * cols * PanelWidth;
            for (int j = 0; j < PanelWidth && p * PanelWidth + j < rows; j++)
            {
                float* row = w + (long)(p * PanelWidth + j) * cols;
                for (int k = 0; k < cols; k++) row[k] = panel[(long)k * PanelWidth + j];
            }
        });
    }

    public void Dispose()
    {
        if (_data == null) return;
        NativeMemory.AlignedFree(_data);
        _data = null;
        GC.SuppressFinalize(this);
    }

    ~PackedWeight()
    {
        if (_data != null) NativeMemory.AlignedFree(_data);
    }
}
