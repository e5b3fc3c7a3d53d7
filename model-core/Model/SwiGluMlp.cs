using Grid.ModelCore.Kernels;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Model;

/// <summary>
/// The feed-forward block used by dense layers, shared experts and every routed expert:
/// down(silu(gate(x)) * up(x)). gate and up are stacked into one [2*inter, d] weight at load; the weights may be
/// 8-bit (<see cref="LinearWeight"/>).
/// </summary>
public sealed class SwiGluMlp : IDisposable
{
    public LinearWeight GateUp { get; }   // [2*inter, d]
    public LinearWeight Down { get; }     // [d, inter]

    /// <summary>Whether silu(gate) * up runs in C# where the kernels take both projections (<see cref="Model.ModelLoadOptions.RowKernels"/>).</summary>
    public bool RowKernels { get; init; } = true;

    public SwiGluMlp(LinearWeight gateUp, LinearWeight down)
    {
        GateUp = gateUp;
        Down = down;
    }

    public static SwiGluMlp Load(Weights.WeightLoader w, string prefix) =>
        new(LinearWeight.StackRows(w.GetLinear($"{prefix}.gate_proj.weight"), w.GetLinear($"{prefix}.up_proj.weight")), w.GetLinear($"{prefix}.down_proj.weight"))
        { RowKernels = w.RowKernels };

    /// <summary>Bytes of its weights.</summary>
    public long Bytes => GateUp.Bytes + Down.Bytes;

    /// <summary>x [N, d] -> [N, d]. Where the kernels take both projections, silu(gate) * up runs as one C# pass
    /// (<see cref="RowKernels.SiluTimesUp"/>, the activation the grouped routed experts use) instead of three libtorch ops.</summary>
    public Tensor Forward(Tensor x)
    {
        long n = x.shape[0];
        if (RowKernels && x.dtype == ScalarType.Float32 && GateUp.KernelsTake(n) && Down.KernelsTake(n))
        {
            var stacked = GateUp.Forward(x);                         // [N, 2*inter], contiguous
            var act = empty(n, Down.Cols, ScalarType.Float32);      // [N, inter]
            unsafe { Kernels.RowKernels.SiluTimesUp(TensorMemory.Pointer<float>(stacked), Down.Cols, TensorMemory.Pointer<float>(act), (int)n); }
            return Down.Forward(act);
        }
        var gateUp = GateUp.Forward(x).chunk(2, -1);   // 2 x [N, inter]
        return Down.Forward(silu(gateUp[0]) * gateUp[1]);
    }

    public void Dispose()
    {
        GateUp.Dispose();
        Down.Dispose();
    }
}
