using System.Text.Json.Nodes;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Where one model-core decode step's time goes at batch 1 and 32, split into fine phases by <see cref="StepProfile"/>
/// (attention's norm, projections + RoPE, cache write, scores/softmax/values, o_proj and residual; the FFN norm, gate,
/// shared and routed experts, the fold of the routed output, lm_head), for the model as loaded by default (C# row
/// kernels) and the same checkpoint with <see cref="ModelLoadOptions.RowKernels"/> off (libtorch for norms, activation,
/// routing and decode attention), interleaved round by round in one process; medians of the rounds.
/// </summary>
public static class DecodeStepBench
{
    public static Section Run(BenchContext c)
    {
        var s = new Section("decode", "Decode step split (model-core, in process): C# row kernels vs libtorch row ops");
        c.Log("loading the model with RowKernels = false");
        using var libtorchRows = DeepseekV2Model.Load(c.ModelDir, new ModelLoadOptions { RowKernels = false });
        var engines = new (string Name, DeepseekV2Model Model)[] { ("row kernels", c.Model), ("libtorch row ops", libtorchRows) };
        int context = c.Quick ? 64 : 256, rounds = c.Quick ? 3 : 5;
        int[] batches = [1, 32];
        var results = new Dictionary<(string, int), List<ModelCoreBench.DecodeResult>>();
        for (int r = 0; r < rounds; r++)
            foreach (var b in batches)
                foreach (var (name, model) in r % 2 == 0 ? engines : engines.Reverse())
                {
                    var d = ModelCoreBench.Decode(model, b, context, b == 1 ? 16 : 6);
                    (results.TryGetValue((name, b), out var list) ? list : results[(name, b)] = new()).Add(d);
                    c.Log($"{name}: decode batch {b} round {r}: {d.TokensPerSecond:F1} tok/s, {d.StepMs:F1} ms/step");
                }
        var phases = results.Values.SelectMany(l => l).SelectMany(d => d.SplitMs.Keys).Distinct().Order().ToList();
        var data = new JsonObject();
        var columns = new List<(string Header, JsonObject Split)>();
        foreach (var b in batches)
            foreach (var (name, _) in engines)
            {
                var runs = results[(name, b)];
                double step = ModelCoreBench.Median(runs.Select(d => d.StepMs));
                var o = new JsonObject { ["step_ms"] = Num(step, 3), ["tokens_per_second"] = Num(b * 1000 / step, 2) };
                foreach (var p in phases) o[p] = Num(ModelCoreBench.Median(runs.Select(d => d.SplitMs.GetValueOrDefault(p))), 3);
                data[$"{name}, batch {b}"] = o;
                columns.Add(($"{name}, batch {b}", o));
                c.Log($"{name}, batch {b}: {step:F1} ms/step, {b * 1000 / step:F1} tok/s; " + string.Join(", ", phases.Select(p => $"{p} {o[p]}")));
            }
        var rows = phases.Select(p => (IReadOnlyList<string>)[p, .. columns.Select(col => F((double)col.Split[p]!, 2))]).ToList();
        rows.Add(["step", .. columns.Select(col => F((double)col.Split["step_ms"]!, 2))]);
        rows.Add(["tok/s", .. columns.Select(col => F((double)col.Split["tokens_per_second"]!, 1))]);
        s.Data["split_ms"] = data;
        s.Table(["phase (ms per step)", .. columns.Select(col => col.Header)], rows);
        foreach (var b in batches)
        {
            double ratio = (double)data[$"libtorch row ops, batch {b}"]!["step_ms"]! / (double)data[$"row kernels, batch {b}"]!["step_ms"]!;
            s.Data[$"speedup_batch_{b}"] = Num(ratio, 3);
            s.Summary.Add(($"decode batch {b}: row kernels / libtorch row ops (tok/s, same run)", $"{ratio:F2}×",
                "norms, SwiGLU activation, routing, cache write and decode attention as C# passes instead of ~40 libtorch calls per layer"));
        }
        s.Notes.Add($"Greedy decode after a {context}-token prompt; per engine and batch the median of {rounds} rounds (16 steps at batch 1, 6 at 32), the engines alternating. attention.* phases are inside attention.");
        return s;
    }
}
