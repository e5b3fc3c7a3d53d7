using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Text.Json.Nodes;
using Grid.Gateway.Hosting;
using Grid.Gateway.Orchestration;
using Grid.Configuration;
using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Grid overhead: decode tokens/s of the same model through model-core in process, the embedded grid (one silo in
/// this process, 4 expert groups) and a 3-silo loopback cluster (separate processes, Redis membership), as ratios;
/// each grid with the shard exchange (one round trip per MoE layer, the default) and the earlier gateway walk (two),
/// the cluster also with float16 hidden states on the wire. Where the embedded grid's batch-1 step goes: the silo's
/// own compute (attention, experts) against the whole step.
/// </summary>
public static class GridOverheadBench
{
    public sealed record Run(int Batch, double TokensPerSecond, double StepMs);

    static readonly TokenSampling Greedy = new(SamplingParams.Greedy, default);

    /// <summary>Prefills <paramref name="batch"/> prompts, then times greedy decode steps of all of them through the executor.</summary>
    public static async Task<Run> DecodeAsync(IStepExecutor executor, int batch, int promptTokens, int steps, long idBase, CancellationToken ct, Action? timing = null)
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
                if (s == 1) { timing?.Invoke(); sw.Restart(); } // step 0 warms up
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

    /// <summary>The in-process silo's tensor work (grid_silo_compute_ms) by kind, summed while listening.</summary>
    sealed class ComputeListener : IDisposable
    {
        readonly MeterListener _listener = new();
        readonly Dictionary<string, double> _ms = new();
        public ComputeListener()
        {
            _listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == SiloTelemetry.Name && i.Name == "grid_silo_compute_ms") l.EnableMeasurementEvents(i); };
            _listener.SetMeasurementEventCallback<double>((_, ms, tags, _) =>
            {
                string kind = "";
                foreach (var t in tags) if (t.Key == "kind") kind = t.Value as string ?? "";
                lock (_ms) _ms[kind] = _ms.GetValueOrDefault(kind) + ms;
            });
            _listener.Start();
        }
        public void Reset() { lock (_ms) _ms.Clear(); }
        public double Ms(string kind) { lock (_ms) return _ms.GetValueOrDefault(kind); }
        public void Dispose() => _listener.Dispose();
    }

    /// <summary>A batch-1 step of the embedded grid: its time, and the silo's attention and expert compute in it.</summary>
    public sealed record Split(string Engine, double StepMs, double AttentionMs, double ExpertsMs);

    static async Task<List<Run>> MeasureAsync(BenchContext c, string label, IStepExecutor executor, int[] batches, int prompt, int steps, CancellationToken ct,
        ComputeListener? compute = null, List<Split>? splits = null)
    {
        var runs = new List<Run>();
        long idBase = 1_000_000;
        foreach (var b in batches)
        {
            c.Log($"{label}: decode batch {b} ({steps} steps)");
            var r = await DecodeAsync(executor, b, prompt, steps, idBase, ct, compute is null ? null : compute.Reset);
            idBase += 1000;
            c.Log($"{label}: batch {b}: {r.TokensPerSecond:F1} tok/s, {r.StepMs:F0} ms/step");
            runs.Add(r);
            if (compute is not null && splits is not null && b == 1)
                splits.Add(new Split(label, r.StepMs, compute.Ms("attention") / steps, compute.Ms("experts") / steps));
        }
        return runs;
    }

    /// <summary>Another walk of the same grid: the connection's own topology with the given exchange and wire dtype.</summary>
    static GridStepExecutor Variant(GridConnection grid, GridClusterOptions options, ExpertExchange exchange, PayloadDtype wire) =>
        new(grid.Services.GetRequiredService<IGrainFactory>(), grid.Executor.Config, new GridTopology
        {
            AttentionShards = options.AttentionShards,
            ExpertGroups = options.ExpertGroups,
            CallTimeout = TimeSpan.FromSeconds(options.CallTimeoutSeconds),
            Exchange = exchange,
            WireDtype = wire,
        }, NullLogger<GridStepExecutor>.Instance);

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("grid", "Grid overhead: model-core vs embedded grid vs 3-silo loopback cluster");
        int[] batches = c.Quick ? [1, 8, 32] : [1, 8, 32, 64];
        int prompt = c.Quick ? 16 : 64, steps = c.Quick ? 4 : 16;
        var engines = new Dictionary<string, List<Run>>();
        var errors = new JsonObject();
        var splits = new List<Split>();
        List<WireBytesBench.Row>? wire = null;

        c.Log("model-core in process: loading");
        await using (var local = await EngineFactory.LoadLocalAsync(c.ModelDir, TorchSharp.torch.ScalarType.Float32, null, ct))
            engines["model-core"] = await MeasureAsync(c, "model-core", local, batches, prompt, steps, ct);

        try
        {
            c.Log("embedded grid: starting (one silo in this process, 4 expert groups)");
            var options = new GridClusterOptions { Clustering = "embedded", ExpertGroups = 4 };
            await using var embedded = await GridConnection.StartAsync(c.ModelDir, "float32", options, null, m => c.Log("embedded: " + m), ct);
            using var compute = new ComputeListener();
            engines["embedded"] = await MeasureAsync(c, "embedded", embedded.Executor, batches, prompt, steps, ct, compute, splits);
            await using (var gatewayWalk = Variant(embedded, options, ExpertExchange.Gateway, PayloadDtype.Float32))
                engines["embedded, gateway walk"] = await MeasureAsync(c, "embedded, gateway walk", gatewayWalk, batches, prompt, steps, ct, compute, splits);
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
            await using (var half = Variant(client, cluster.Options, ExpertExchange.Shard, PayloadDtype.Float16))
                engines["cluster, f16 wire"] = await MeasureAsync(c, "cluster, f16 wire", half, batches, prompt, steps, ct);
            await using (var gatewayWalk = Variant(client, cluster.Options, ExpertExchange.Gateway, PayloadDtype.Float32))
                engines["cluster, gateway walk"] = await MeasureAsync(c, "cluster, gateway walk", gatewayWalk, batches, prompt, steps, ct);
            var clusterWire = await WireBytesBench.MeasureAsync(c, client, [1, batches[^1]], prompt, ct);
            s.Data["cluster_wire_bytes_per_decode_step"] = new JsonArray(clusterWire.Select(r => (JsonNode)new JsonObject
            {
                ["batch"] = r.Batch, ["hidden_states"] = r.After.HiddenStates, ["total"] = r.After.Total,
            }).ToArray());
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
        s.Notes.Add("Embedded and cluster use the shard exchange (Grid:Cluster:ExpertExchange=shard, the default); \"gateway walk\" is Grid:Cluster:ExpertExchange=gateway on the same grid, the walk before it; \"f16 wire\" is Grid:Cluster:WireDtype=float16.");
        s.Notes.Add("Cluster: deploy/local/cluster.sh up --silos 3 (Redis membership; silo 0 attention + groups 0 and 3, silos 1 and 2 one group each; 1 torch thread per silo since 3 silos share 2 cores); this process connects as an Orleans client.");
        foreach (var (k, v) in errors) s.Notes.Add($"{k} failed: {v}");
        if (wire is not null) WireBytesBench.Describe(s, wire, Grid.ModelCore.Config.ModelConfig.Load(Path.Combine(c.ModelDir, "config.json")).VocabSize);

        if (splits.Count > 0)
        {
            double coreMs = baseline[0].StepMs;
            s.Data["batch1_split"] = new JsonArray(splits.Select(x => (JsonNode)new JsonObject
            {
                ["engine"] = x.Engine, ["step_ms"] = Num(x.StepMs, 2), ["attention_ms"] = Num(x.AttentionMs, 2), ["experts_ms"] = Num(x.ExpertsMs, 2),
                ["model_core_step_ms"] = Num(coreMs, 2),
            }).ToArray());
            s.Markdown.Add("Where a batch-1 decode step of the embedded grid goes (the silo's tensor work on its inference thread, by kind; the rest is orchestration: grain calls, payload copies, thread hops, waiting):");
            s.Markdown.Add("");
            s.Table(["engine", "ms/step", "attention compute ms", "expert compute ms", "rest ms (share)", "model-core ms/step"],
                splits.Select(x => (IReadOnlyList<string>)[x.Engine, F(x.StepMs, 1), F(x.AttentionMs, 1), F(x.ExpertsMs, 1),
                    $"{F(x.StepMs - x.AttentionMs - x.ExpertsMs, 1)} ({Pct((x.StepMs - x.AttentionMs - x.ExpertsMs) / x.StepMs)})", F(coreMs, 1)]));
        }

        int mid = Array.IndexOf(batches, 8);
        foreach (var name in engines.Keys.Where(n => n != "model-core"))
            s.Summary.Add(($"{name} / model-core decode tok/s, batch 1 / 8 / {batches[^1]}",
                string.Join(" / ", new[] { 0, mid, batches.Length - 1 }.Select(i => Pct(engines[name][i].TokensPerSecond / baseline[i].TokensPerSecond))),
                name switch
                {
                    "embedded" => "one exchange call per MoE layer; every group runs in place on the silo's inference thread (no payloads)",
                    "embedded, gateway walk" => "the earlier walk: 7 MoE layers × (attention call + 4 expert-group calls), float copies of hidden states",
                    "cluster" => "one exchange per MoE layer; 2 of 4 groups over loopback TCP from the attention silo; 3 silo processes time-share 2 cores",
                    "cluster, f16 wire" => "as cluster, hidden states in float16 on the wire (half the bytes, a conversion at each edge)",
                    _ => "the earlier walk: two round trips per MoE layer through the client, every group over loopback TCP",
                }));
        return s;
    }
}
