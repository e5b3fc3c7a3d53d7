using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Model;

/// <summary>
/// The feed-forward block used by dense layers, shared experts and every routed expert:
/// down(silu(gate(x)) * up(x)). gate and up are fused into one [2*inter, d] matrix at load.
/// </summary>
public sealed class SwiGluMlp : IDisposable
{
    readonly Tensor _gateUp;   // [2*inter, d]
    readonly Tensor _down;     // [d, inter]

    public SwiGluMlp(Tensor gate, Tensor up, Tensor down)
    {
        using (NewDisposeScope()) _gateUp = cat([gate, up], 0).DetachFromDisposeScope();
        gate.Dispose();
        up.Dispose();
        _down = down;
    }

    public static SwiGluMlp Load(Weights.WeightLoader w, string prefix) =>
        new(w.Get($"{prefix}.gate_proj.weight"), w.Get($"{prefix}.up_proj.weight"), w.Get($"{prefix}.down_proj.weight"));

    /// <summary>x [N, d] -> [N, d].</summary>
    public Tensor Forward(Tensor x)
    {
        var gateUp = linear(x, _gateUp).chunk(2, -1);   // 2 x [N, inter]
        return linear(silu(gateUp[0]) * gateUp[1], _down);
    }

    public void Dispose()
    {
        _gateUp.Dispose();
        _down.Dispose();
    }
}
