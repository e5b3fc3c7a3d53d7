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
    public sealed record Run(int Batch, double TokensPerSecond, double StepMs)
    {
        /// <summary>The fastest step (interleaved runs): the step's cost when the machine was least contended.</summary>
        public double MinStepMs { get; init; } = double.NaN;
    }

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

    /// <summary>
    /// Decode steps of several engines interleaved step by step (the order rotating each round), each engine's median step
    /// time: on a shared machine whatever else runs slows every engine alike, so the ratios hold where absolute times do not.
    /// </summary>
    static async Task<Dictionary<string, Run>> InterleavedAsync(BenchContext c, IReadOnlyList<(string Name, IStepExecutor Executor)> engines, int batch,
        int prompt, int steps, long idBase, CancellationToken ct, ComputeListener? compute = null, List<Split>? splits = null)
    {
        var ids = engines.Select((_, e) => Enumerable.Range(0, batch).Select(b => idBase + 10_000 * e + b).ToArray()).ToArray();
        var next = engines.Select(_ => new int[batch]).ToArray();
        var ms = engines.Select(_ => new List<double>()).ToArray();
        var attention = new double[engines.Count];
        var experts = new double[engines.Count];
        try
        {
            int perStep = Math.Max(1, 512 / prompt);
            for (int e = 0; e < engines.Count; e++)
                for (int at = 0; at < batch; at += perStep)
                {
                    var part = Enumerable.Range(at, Math.Min(perStep, batch - at)).ToArray();
                    var results = await engines[e].Executor.StepAsync(part.Select(b => new StepChunk(ids[e][b], 0, ModelCoreBench.Prompt(engines[e].Executor.Config, prompt, b)) { Sample = Greedy }).ToList(), ct);
                    for (int i = 0; i < part.Length; i++) next[e][part[i]] = results[i].Next!.Token;
                }
            for (int s = 0; s < steps + 1; s++)   // step 0 warms up
                for (int k = 0; k < engines.Count; k++)
                {
                    int e = (k + s) % engines.Count;
                    compute?.Reset();
                    var sw = Stopwatch.StartNew();
                    var results = await engines[e].Executor.StepAsync(ids[e].Select((id, b) => new StepChunk(id, prompt + s, [next[e][b]]) { Sample = Greedy }).ToList(), ct);
                    sw.Stop();
                    for (int b = 0; b < batch; b++) next[e][b] = results[b].Next!.Token;
                    if (s == 0) continue;
                    ms[e].Add(sw.Elapsed.TotalMilliseconds);
                    if (compute is not null) { attention[e] += compute.Ms("attention"); experts[e] += compute.Ms("experts"); }
                }
        }
        finally
        {
            for (int e = 0; e < engines.Count; e++) await engines[e].Executor.ReleaseAsync(ids[e], CancellationToken.None);
        }
        var runs = new Dictionary<string, Run>();
        for (int e = 0; e < engines.Count; e++)
        {
            var sorted = ms[e].Order().ToArray();
            double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            runs[engines[e].Name] = new Run(batch, batch * 1000 / median, median) { MinStepMs = sorted[0] };
            c.Log($"{engines[e].Name}: batch {batch}: median {median:F0} ms/step ({batch * 1000 / median:F1} tok/s; steps {string.Join(", ", ms[e].Select(x => x.ToString("F0")))})");
            if (splits is not null && batch == 1 && engines[e].Name != "model-core")
                splits.Add(new Split(engines[e].Name, ms[e].Average(), attention[e] / steps, experts[e] / steps));   // means: compute sums are per step
        }
        return runs;
    }

    /// <summary>Another walk of the same grid: the connection's own topology with the given exchange and wire dtype.</summary>
    static GridStepExecutor Variant(GridConnection grid, GridClusterOptions options, ExpertExchange exchange, PayloadDtype wire, int layersPerCall = 0) =>
        new(grid.Services.GetRequiredService<IGrainFactory>(), grid.Executor.Config, new GridTopology
        {
            AttentionShards = options.AttentionShards,
            ExpertGroups = options.ExpertGroups,
            CallTimeout = TimeSpan.FromSeconds(options.CallTimeoutSeconds),
            Exchange = exchange,
            WireDtype = wire,
            LayersPerCall = layersPerCall,
        }, NullLogger<GridStepExecutor>.Instance);

    /// <summary>Every batch through the engines interleaved; per engine its runs, and the model-core runs of the same rounds.</summary>
    static async Task MeasureRoundAsync(BenchContext c, IStepExecutor local, IReadOnlyList<(string Name, IStepExecutor Executor)> grids, int[] batches, int prompt,
        int steps, Dictionary<string, List<Run>> engines, Dictionary<string, List<Run>> baselines, CancellationToken ct, ComputeListener? compute = null, List<Split>? splits = null)
    {
        var all = new List<(string, IStepExecutor)> { ("model-core", local) };
        all.AddRange(grids);
        long idBase = 1_000_000;
        foreach (var b in batches)
        {
            // Batch-1 steps are short: many more of them make the medians hold on a shared machine.
            int n = b == 1 ? Math.Max(steps, 24) : steps;
            c.Log($"{string.Join(" | ", all.Select(e => e.Item1))}: decode batch {b}, {n} steps interleaved");
            var runs = await InterleavedAsync(c, all, b, prompt, n, idBase, ct, compute, splits);
            idBase += 100_000;
            foreach (var (name, _) in grids)
            {
                (engines.TryGetValue(name, out var list) ? list : engines[name] = new()).Add(runs[name]);
                (baselines.TryGetValue(name, out var bl) ? bl : baselines[name] = new()).Add(runs["model-core"]);
            }
        }
    }

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("grid", "Grid overhead: model-core vs embedded grid vs 3-silo loopback cluster");
        int[] batches = c.Quick ? [1, 8, 32] : [1, 8, 32, 64];
        int prompt = c.Quick ? 16 : 64, steps = c.Quick ? 6 : 16;
        var engines = new Dictionary<string, List<Run>>();
        var baselines = new Dictionary<string, List<Run>>();
        var errors = new JsonObject();
        var splits = new List<Split>();
        List<WireBytesBench.Row>? wire = null;

        c.Log("model-core in process: loading");
        await using var local = await EngineFactory.LoadLocalAsync(c.ModelDir, TorchSharp.torch.ScalarType.Float32, null, ct);

        try
        {
            c.Log("embedded grid: starting (one silo in this process, 4 expert groups)");
            var options = new GridClusterOptions { Clustering = "embedded", ExpertGroups = 4 };
            await using var embedded = await GridConnection.StartAsync(c.ModelDir, "float32", options, null, m => c.Log("embedded: " + m), ct);
            using var compute = new ComputeListener();
            await using var gatewayWalk = Variant(embedded, options, ExpertExchange.Gateway, PayloadDtype.Float32);
            await MeasureRoundAsync(c, local, [("embedded", embedded.Executor), ("embedded, gateway walk", gatewayWalk)], batches, prompt, steps, engines, baselines, ct, compute, splits);
            wire = await WireBytesBench.MeasureAsync(c, embedded, [1, batches[^1]], prompt, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            c.Log($"embedded grid failed: {e}");
            errors["embedded"] = e.Message.Split('\n')[0];
        }

        try
        {
            await using var cluster = await LoopbackCluster.StartAsync(c, silos: 3, ct);
            c.Log($"cluster: connecting as a client ({cluster.Options.ExpertGroups} expert groups)");
            await using var client = await GridConnection.StartAsync(c.ModelDir, "float32", cluster.Options, null, m => c.Log("cluster: " + m), ct);
            await using var half = Variant(client, cluster.Options, ExpertExchange.Shard, PayloadDtype.Float16);
            await using var gatewayWalk = Variant(client, cluster.Options, ExpertExchange.Gateway, PayloadDtype.Float32);
            await using var perLayer = Variant(client, cluster.Options, ExpertExchange.Shard, PayloadDtype.Float32, layersPerCall: 1);
            await MeasureRoundAsync(c, local, [("cluster", client.Executor), ("cluster, call per layer", perLayer), ("cluster, f16 wire", half), ("cluster, gateway walk", gatewayWalk)],
                batches, prompt, steps, engines, baselines, ct);
            var clusterWire = new List<(string, List<WireBytesBench.Row>)>();
            foreach (var (name, executor) in new[] { ("shard exchange", client.Executor), ("shard exchange, f16", half), ("gateway walk", gatewayWalk) })
                clusterWire.Add((name, await WireBytesBench.MeasureAsync(c, executor, client.Services, [1, batches[^1]], prompt, ct)));
            s.Data["cluster_wire_bytes_per_decode_step"] = new JsonArray(clusterWire.SelectMany(w => w.Item2.Select(r => (JsonNode)new JsonObject
            {
                ["walk"] = w.Item1, ["batch"] = r.Batch, ["hidden_states"] = r.After.HiddenStates, ["total"] = r.After.Total,
            })).ToArray());
            s.Markdown.Add("Bytes on the wire per decode step in the 3-silo cluster (serialized with the cluster's Orleans serializer; hidden states between the client, the attention silo and the expert groups):");
            s.Markdown.Add("");
            s.Table(["walk", .. clusterWire[0].Item2.Select(r => $"batch {r.Batch}: hidden states / total")],
                clusterWire.Select(w => (IReadOnlyList<string>)[w.Item1, .. w.Item2.Select(r => $"{r.After.HiddenStates} / {r.After.Total}")]));
            s.Markdown.Add("");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            c.Log($"cluster failed: {e}");
            errors["cluster"] = e.Message.Split('\n')[0];
        }

        var results = new JsonArray();
        var rows = new List<string[]>();
        for (int i = 0; i < batches.Length; i++)
        {
            var o = new JsonObject { ["batch"] = batches[i] };
            var row = new List<string> { batches[i].ToString() };
            foreach (var (name, runs) in engines)
            {
                var r = runs[i];
                var core = baselines[name][i];
                double ratio = r.TokensPerSecond / core.TokensPerSecond, dispatch = r.StepMs - core.StepMs;
                o[name] = new JsonObject
                {
                    ["tokens_per_second"] = Num(r.TokensPerSecond, 2),
                    ["step_ms"] = Num(r.StepMs, 2),
                    ["model_core_step_ms"] = Num(core.StepMs, 2),
                    ["min_step_ms"] = Num(r.MinStepMs, 2),
                    ["model_core_min_step_ms"] = Num(core.MinStepMs, 2),
                    ["ratio_of_min_steps"] = Num(core.MinStepMs / r.MinStepMs),
                    ["ratio_to_model_core"] = Num(ratio),
                    ["dispatch_ms"] = Num(dispatch, 2),
                };
                row.Add($"{Pct(ratio)} ({F(r.StepMs, 0)} vs {F(core.StepMs, 0)} ms; fastest steps {Pct(core.MinStepMs / r.MinStepMs)})");
            }
            results.Add(o);
            rows.Add(row.ToArray());
        }
        s.Data["prompt_tokens"] = prompt;
        s.Data["steps"] = steps;
        s.Data["results"] = results;
        if (errors.Count > 0) s.Data["errors"] = errors;
        var header = new List<string> { "batch" };
        foreach (var name in engines.Keys) header.Add($"{name} / model-core (median ms/step vs model-core's)");
        s.Table(header, rows);
        s.Notes.Add($"Greedy decode of {prompt}-token prompts, {steps} steps after one warm-up, every engine driven through IStepExecutor.StepAsync (model-core = LocalStepExecutor), the engines' steps interleaved one by one with model-core's (rotating order) and each taken as its median step time: on a shared machine the ratios hold where absolute times do not.");
        s.Notes.Add("Dispatch ms/step is derived: the engine's step time minus model-core's at the same batch (orchestration, grain calls, payload copies, serialization, and for the cluster loopback TCP and the silos' share of the cores). It is not instrumented per call.");
        s.Notes.Add("Embedded and cluster use the shard exchange (Grid:Cluster:ExpertExchange=shard, the default) walking the whole step per gateway call (Grid:Cluster:LayersPerCall=0, the default); \"call per layer\" is LayersPerCall=1 on the same grid; \"gateway walk\" is Grid:Cluster:ExpertExchange=gateway, the walk before both; \"f16 wire\" is Grid:Cluster:WireDtype=float16.");
        s.Notes.Add("Cluster: deploy/local/cluster.sh up --silos 3 (Redis membership; silo 0 attention + groups 0 and 3, silos 1 and 2 one group each; the attention silo computes with both cores, the expert-only silos with one thread each); this process connects as an Orleans client.");
        foreach (var (k, v) in errors) s.Notes.Add($"{k} failed: {v}");
        if (wire is not null) WireBytesBench.Describe(s, wire, Grid.ModelCore.Config.ModelConfig.Load(Path.Combine(c.ModelDir, "config.json")).VocabSize);

        if (splits.Count > 0)
        {
            double coreMs = baselines["embedded"][0].StepMs;
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
        foreach (var name in engines.Keys)
            s.Summary.Add(($"{name} / model-core decode tok/s, batch 1 / 8 / {batches[^1]}",
                string.Join(" / ", new[] { 0, mid, batches.Length - 1 }.Select(i => Pct(engines[name][i].TokensPerSecond / baselines[name][i].TokensPerSecond))),
                name switch
                {
                    "embedded" => "one gateway call per step (the shard walks every layer); every group runs in place on the silo's inference thread (no payloads)",
                    "embedded, gateway walk" => "the earlier walk: 7 MoE layers × (attention call + 4 expert-group calls), float copies of hidden states",
                    "cluster" => "one gateway call per step; per MoE layer the attention silo calls 2 of 4 groups over loopback TCP; 3 silo processes time-share 2 cores",
                    "cluster, call per layer" => "as cluster, with Grid:Cluster:LayersPerCall 1: a gateway round trip per MoE layer as well (the walk before)",
                    "cluster, f16 wire" => "as cluster, hidden states in float16 on the wire (half the bytes, a conversion at each edge)",
                    _ => "the earlier walk: two round trips per MoE layer through the client, every group over loopback TCP",
                }));
        return s;
    }
}
