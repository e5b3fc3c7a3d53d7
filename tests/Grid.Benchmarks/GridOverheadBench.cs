using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.Gateway.Hosting;
using Grid.Configuration;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Grid overhead: decode tokens/s of the same model through model-core in process, the embedded grid (one silo in
/// this process, 4 expert groups) and a 3-silo loopback cluster (separate processes, Redis membership), as ratios.
/// </summary>
public static class GridOverheadBench
{
    public sealed record Run(int Batch, double TokensPerSecond, double StepMs);

    static readonly TokenSampling Greedy = new(SamplingParams.Greedy, default);

    /// <summary>Prefills <paramref name="batch"/> prompts, then times greedy decode steps of all of them through the executor.</summary>
    public static async Task<Run> DecodeAsync(IStepExecutor executor, int batch, int promptTokens, int steps, long idBase, CancellationToken ct)
    {
        var ids = Enumerable.Range(0, batch).Select(b => idBase + b).ToArray();
        var next = new int[batch];
        try
        {
            // Prefill in steps of at most 512 prompt tokens, as the scheduler would.
            int perStep = Math.Max(1, 512 / promptTokens);
            for (int at = 0; at < batch; at += perStep)
            {
                var part = Enumerable.Range(at, Math.Min(perStep, batch - at)).ToArray();
                var results = await executor.StepAsync(part.Select(b => new StepChunk(ids[b], 0, ModelCoreBench.Prompt(executor.Config, promptTokens, b)) { Sample = Greedy }).ToList(), ct);
                for (int i = 0; i < part.Length; i++) next[part[i]] = results[i].Next!.Token;
            }
            var sw = new Stopwatch();
            for (int s = 0; s < steps + 1; s++)
            {
                if (s == 1) sw.Restart(); // step 0 warms up
                var results = await executor.StepAsync(ids.Select((id, b) => new StepChunk(id, promptTokens + s, [next[b]]) { Sample = Greedy }).ToList(), ct);
                for (int b = 0; b < batch; b++) next[b] = results[b].Next!.Token;
            }
            sw.Stop();
            return new Run(batch, batch * steps / sw.Elapsed.TotalSeconds, sw.Elapsed.TotalMilliseconds / steps);
        }
        finally
        {
            await executor.ReleaseAsync(ids, CancellationToken.None);
        }
    }

    static async Task<List<Run>> MeasureAsync(BenchContext c, string label, IStepExecutor executor, int[] batches, int prompt, int steps, CancellationToken ct)
    {
        var runs = new List<Run>();
        long idBase = 1_000_000;
        foreach (var b in batches)
        {
            c.Log($"{label}: decode batch {b} ({steps} steps)");
            var r = await DecodeAsync(executor, b, prompt, steps, idBase, ct);
            idBase += 1000;
            c.Log($"{label}: batch {b}: {r.TokensPerSecond:F1} tok/s, {r.StepMs:F0} ms/step");
            runs.Add(r);
        }
        return runs;
    }

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("grid", "Grid overhead: model-core vs embedded grid vs 3-silo loopback cluster");
        int[] batches = c.Quick ? [1, 8, 32] : [1, 8, 32, 64];
        int prompt = c.Quick ? 16 : 64, steps = c.Quick ? 4 : 16;
        var engines = new Dictionary<string, List<Run>>();
        var errors = new JsonObject();
        List<WireBytesBench.Row>? wire = null;

        c.Log("model-core in process: loading");
        await using (var local = await EngineFactory.LoadLocalAsync(c.ModelDir, TorchSharp.torch.ScalarType.Float32, null, ct))
            engines["model-core"] = await MeasureAsync(c, "model-core", local, batches, prompt, steps, ct);

        try
        {
            c.Log("embedded grid: starting (one silo in this process, 4 expert groups)");
            await using var embedded = await GridConnection.StartAsync(c.ModelDir, "float32",
                new GridClusterOptions { Clustering = "embedded", ExpertGroups = 4 }, null, m => c.Log("embedded: " + m), ct);
            engines["embedded"] = await MeasureAsync(c, "embedded", embedded.Executor, batches, prompt, steps, ct);
            wire = await WireBytesBench.MeasureAsync(c, embedded, [1, batches[^1]], prompt, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            c.Log($"embedded grid failed: {e.Message}");
            errors["embedded"] = e.Message.Split('\n')[0];
        }

        try
        {
            await using var cluster = await LoopbackCluster.StartAsync(c, silos: 3, ct);
            c.Log($"cluster: connecting as a client ({cluster.Options.ExpertGroups} expert groups)");
            await using var client = await GridConnection.StartAsync(c.ModelDir, "float32", cluster.Options, null, m => c.Log("cluster: " + m), ct);
            engines["cluster"] = await MeasureAsync(c, "cluster", client.Executor, batches, prompt, steps, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            c.Log($"cluster failed: {e.Message}");
            errors["cluster"] = e.Message.Split('\n')[0];
        }

        var baseline = engines["model-core"];
        var results = new JsonArray();
        var rows = new List<string[]>();
        for (int i = 0; i < batches.Length; i++)
        {
            var o = new JsonObject { ["batch"] = batches[i] };
            var row = new List<string> { batches[i].ToString() };
            foreach (var (name, runs) in engines)
            {
                var r = runs[i];
                double ratio = r.TokensPerSecond / baseline[i].TokensPerSecond, dispatch = r.StepMs - baseline[i].StepMs;
                o[name] = new JsonObject
                {
                    ["tokens_per_second"] = Num(r.TokensPerSecond, 2),
                    ["step_ms"] = Num(r.StepMs, 2),
                    ["ratio_to_model_core"] = Num(ratio),
                    ["dispatch_ms"] = name == "model-core" ? 0 : Num(dispatch, 2),
                };
                row.Add(F(r.TokensPerSecond));
                if (name != "model-core") row.Add($"{Pct(ratio)} ({(dispatch >= 0 ? "+" : "")}{F(dispatch, 0)} ms)");
            }
            results.Add(o);
            rows.Add(row.ToArray());
        }
        s.Data["prompt_tokens"] = prompt;
        s.Data["steps"] = steps;
        s.Data["results"] = results;
        if (errors.Count > 0) s.Data["errors"] = errors;
        var header = new List<string> { "batch", "model-core tok/s" };
        foreach (var name in engines.Keys.Where(n => n != "model-core")) header.AddRange([$"{name} tok/s", $"{name} / model-core (dispatch ms/step)"]);
        s.Table(header, rows);
        s.Notes.Add($"Greedy decode of {prompt}-token prompts, {steps} steps after one warm-up, every engine driven through IStepExecutor.StepAsync by the same loop (model-core = LocalStepExecutor).");
        s.Notes.Add("Dispatch ms/step is derived: the engine's step time minus model-core's at the same batch (orchestration, grain calls, payload copies, serialization, and for the cluster loopback TCP and the silos' share of the cores). It is not instrumented per call.");
        s.Notes.Add("Cluster: deploy/local/cluster.sh up --silos 3 (Redis membership; silo 0 attention + groups 0 and 3, silos 1 and 2 one group each; 1 torch thread per silo since 3 silos share 2 cores); this process connects as an Orleans client.");
        foreach (var (k, v) in errors) s.Notes.Add($"{k} failed: {v}");
        if (wire is not null) WireBytesBench.Describe(s, wire, Grid.ModelCore.Config.ModelConfig.Load(Path.Combine(c.ModelDir, "config.json")).VocabSize);

        int mid = Array.IndexOf(batches, 8);
        foreach (var name in engines.Keys.Where(n => n != "model-core"))
            s.Summary.Add(($"{name} grid / model-core decode tok/s, batch 1 / 8 / {batches[^1]}",
                string.Join(" / ", new[] { 0, mid, batches.Length - 1 }.Select(i => Pct(engines[name][i].TokensPerSecond / baseline[i].TokensPerSecond))),
                name == "embedded"
                    ? "per-layer orchestration: 7 MoE layers × (attention call + expert-group calls) per step, float copies of hidden states"
                    : "as embedded plus loopback TCP + serialization, and 3 silo processes time-sharing 2 cores with 1 torch thread each"));
        return s;
    }
}
