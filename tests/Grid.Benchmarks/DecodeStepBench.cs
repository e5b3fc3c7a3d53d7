using System.Text.Json.Nodes;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Where one model-core decode step's time goes at batch 1 and 32: the step split into fine phases by
/// <see cref="StepProfile"/> (attention's norm, projections + RoPE, cache write/read, scores/softmax/values, o_proj and
/// residual; the FFN norm, gate, shared and routed experts, the fold of the routed output, lm_head), medians of
/// interleaved rounds.
/// </summary>
public static class DecodeStepBench
{
    public static Section Run(BenchContext c)
    {
        var s = new Section("decode", "Decode step split (model-core, in process)");
        var model = c.Model;
        int context = c.Quick ? 64 : 256, rounds = c.Quick ? 3 : 5;
        int[] batches = [1, 32];
        var results = batches.ToDictionary(b => b, _ => new List<ModelCoreBench.DecodeResult>());
        for (int r = 0; r < rounds; r++)
            foreach (var b in batches)
            {
                var d = ModelCoreBench.Decode(model, b, context, b == 1 ? 16 : 6);
                results[b].Add(d);
                c.Log($"decode batch {b} round {r}: {d.TokensPerSecond:F1} tok/s, {d.StepMs:F1} ms/step");
            }
        var phases = results.Values.SelectMany(l => l).SelectMany(d => d.SplitMs.Keys).Distinct().Order().ToList();
        var rows = new List<string[]>();
        var data = new JsonObject();
        foreach (var b in batches)
        {
            var runs = results[b];
            double step = ModelCoreBench.Median(runs.Select(d => d.StepMs));
            var o = new JsonObject { ["step_ms"] = Num(step, 3), ["tokens_per_second"] = Num(b * 1000 / step, 2) };
            foreach (var p in phases) o[p] = Num(ModelCoreBench.Median(runs.Select(d => d.SplitMs.GetValueOrDefault(p))), 3);
            data[$"batch_{b}"] = o;
            c.Log($"batch {b}: {step:F1} ms/step, {b * 1000 / step:F1} tok/s; " + string.Join(", ", phases.Select(p => $"{p} {o[p]}")));
        }
        foreach (var p in phases)
            rows.Add([p, .. batches.Select(b => F((double)data[$"batch_{b}"]![p]!, 2))]);
        rows.Add(["step", .. batches.Select(b => F((double)data[$"batch_{b}"]!["step_ms"]!, 2))]);
        rows.Add(["tok/s", .. batches.Select(b => F((double)data[$"batch_{b}"]!["tokens_per_second"]!, 1))]);
        s.Data["split_ms"] = data;
        s.Table(["phase (ms per step)", .. batches.Select(b => $"batch {b}")], rows);
        s.Notes.Add($"Greedy decode after a {context}-token prompt; per batch the median of {rounds} interleaved rounds (16 steps at batch 1, 6 at 32). attention.* phases are inside attention.");
        return s;
    }
}
