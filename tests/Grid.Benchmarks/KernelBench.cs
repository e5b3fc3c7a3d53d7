using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Benchmarks;

/// <summary>
/// Kernel efficiency: prefill FLOP/s of model-core as a fraction of a plain float32 matmul measured in the same
/// run (the practical ceiling of libtorch on this CPU), and the decode step split by phase.
/// </summary>
public static class KernelBench
{
    /// <summary>Decode-step phases as reported: StepProfile phases folded into attention, gate, expert FFN, other, sampling.</summary>
    public static Dictionary<string, double> Fold(IReadOnlyDictionary<string, double> ms)
    {
        double Get(string k) => ms.TryGetValue(k, out var v) ? v : 0;
        return new Dictionary<string, double>
        {
            ["attention"] = Get(StepProfile.Attention),
            ["gate"] = Get(StepProfile.Gate),
            ["expert_ffn"] = Get(StepProfile.RoutedExperts) + Get(StepProfile.SharedExperts),
            ["dense_mlp"] = Get(StepProfile.DenseMlp),
            ["embed_logits"] = Get(StepProfile.Embed) + Get(StepProfile.Logits),
            ["sampling"] = Get("sampling"),
        };
    }

    public static Section Run(BenchContext c)
    {
        var s = new Section("kernel", "Kernel efficiency (model-core, in process)");
        c.Log("matmul ceiling (1024^3 float32)");
        double gflops = ModelCoreBench.MatmulGflops(reps: c.Quick ? 10 : 30);
        c.MatmulGflops = gflops;
        c.Log($"matmul: {gflops:F1} GFLOP/s");

        var model = c.Model;
        int prefillTokens = c.Quick ? 256 : 512;
        c.Log($"prefill {prefillTokens} tokens");
        var prefill = ModelCoreBench.Prefill(model, prefillTokens, c.Quick ? 2 : 5);
        // Measure the ceiling again right after the prefill and keep the higher median, so a slow moment of the VM
        // during one measurement cannot inflate the ratio.
        gflops = Math.Max(gflops, ModelCoreBench.MatmulGflops(reps: c.Quick ? 10 : 30));
        c.MatmulGflops = gflops;
        c.Log($"matmul (higher of two medians): {gflops:F1} GFLOP/s");
        double efficiency = prefill.Gflops / gflops;
        c.Log($"prefill: {prefill.TokensPerSecond:F1} tok/s, {prefill.Gflops:F1} GFLOP/s = {efficiency:P0} of matmul, {prefill.MinorFaults:F0} minor page faults per prefill");
        s.Data["matmul_gflops"] = Num(gflops, 2);
        s.Data["prefill"] = new JsonObject
        {
            ["tokens"] = prefillTokens,
            ["seconds"] = Num(prefill.Seconds),
            ["tokens_per_second"] = Num(prefill.TokensPerSecond, 2),
            ["gflops"] = Num(prefill.Gflops, 2),
            ["fraction_of_matmul"] = Num(efficiency),
            ["minor_faults_per_prefill"] = Num(prefill.MinorFaults, 0),
        };

        GemmShapes(c, s, gflops, model.Config);
        KernelsVsLibtorch(c, s, prefillTokens, prefill);

        int[] batches = c.Quick ? [1, 8, 32] : [1, 8, 32, 64];
        int context = c.Quick ? 64 : 512, steps = c.Quick ? 6 : 32, rounds = 5;
        // The batches alternate over the rounds and each keeps its median round, so a slow moment of a shared machine
        // lands in one round of every batch instead of in one batch's only measurement; the goal's ratio between two
        // batches is the median of the ratios within each round (rounds in the JSON). Batch 1 runs 4x the steps: a
        // step is short, and a few steps would be one scheduler hiccup away from a different figure.
        int StepsOf(int batch) => batch == 1 ? 4 * steps : steps;
        var measured = batches.ToDictionary(b => b, _ => new List<ModelCoreBench.DecodeResult>());
        for (int round = 0; round < rounds; round++)
            foreach (var b in batches)
            {
                c.Log($"decode batch {b} (context {context}, {StepsOf(b)} steps), round {round + 1} of {rounds}");
                measured[b].Add(ModelCoreBench.Decode(model, b, context, StepsOf(b)));
            }
        var decode = new JsonArray();
        var decodeShares = new List<double>();
        var rows = new List<string[]>();
        foreach (var b in batches)
        {
            var d = measured[b].OrderBy(r => r.TokensPerSecond).ElementAt(rounds / 2);
            var split = Fold(d.SplitMs);
            c.Log($"decode batch {b}, median of {rounds} rounds: {d.TokensPerSecond:F1} tok/s, {d.StepMs:F0} ms/step ({string.Join(", ", split.Select(kv => $"{kv.Key} {kv.Value:F1}"))})");
            decode.Add(new JsonObject
            {
                ["batch"] = b,
                ["context"] = context,
                ["steps"] = StepsOf(b),
                ["rounds"] = rounds,
                ["tokens_per_second"] = Num(d.TokensPerSecond, 2),
                ["tokens_per_second_rounds"] = new JsonArray(measured[b].Select(r => (JsonNode?)Num(r.TokensPerSecond, 2)).ToArray()),
                ["step_ms"] = Num(d.StepMs, 2),
                ["split_ms"] = new JsonObject(split.Select(kv => KeyValuePair.Create(kv.Key, Num(kv.Value, 3)))),
                ["profile_ms"] = new JsonObject(d.SplitMs.Select(kv => KeyValuePair.Create(kv.Key, Num(kv.Value, 3)))),
            });
            double Share(string k) => split[k] / d.StepMs;
            // Weight FLOPs per generated token (the activated path's matmuls; attention over the cache left out), as a share of matmul.
            double decodeGflops = d.TokensPerSecond * ModelCoreBench.PrefillFlops(model.Config, 1, 0) / 1e9;
            ((JsonObject)decode[^1]!)["gflops"] = Num(decodeGflops, 2);
            ((JsonObject)decode[^1]!)["of_matmul"] = Num(decodeGflops / gflops, 4);
            decodeShares.Add(decodeGflops / gflops);
            rows.Add([b.ToString(), F(d.TokensPerSecond), $"{F(decodeGflops, 2)} ({Pct(decodeGflops / gflops)})", F(d.StepMs, 0),
                $"{F(split["attention"])} ({Pct(Share("attention"))})", $"{F(split["gate"], 2)} ({Pct(Share("gate"))})",
                $"{F(split["expert_ffn"])} ({Pct(Share("expert_ffn"))})", $"{F(split["dense_mlp"])}", $"{F(split["embed_logits"], 2)}",
                "0 (in process)", $"{F(split["sampling"], 2)}"]);
        }
        s.Data["decode"] = decode;

        s.Markdown.Add($"Plain float32 matmul 1024³: **{F(gflops)} GFLOP/s**. Prefill of {prefillTokens} tokens: {F(prefill.TokensPerSecond)} tok/s, " +
                       $"{F(prefill.Gflops)} GFLOP/s = **{Pct(efficiency)} of matmul** (FLOPs counted analytically: projections, gate, top-K + shared experts, naive attention, lm_head on the last token).");
        s.Markdown.Add("");
        s.Table(["batch", "tok/s", "GFLOP/s (of matmul)", "ms/step", "attention ms", "gate ms", "expert FFN ms", "dense MLP ms", "embed+logits ms", "dispatch ms", "sampling ms"], rows);
        s.Notes.Add($"Decode after a {context}-token prompt, greedy, mean over {steps} steps after one warm-up step, the median of {rounds} rounds with the batches alternating; phases from StepProfile (stopwatch around each phase; CPU ops are synchronous) of the median round.");
        s.Notes.Add("Decode GFLOP/s counts the weight FLOPs of the activated path per generated token (2 x activated parameters, lm_head included; attention over the cache left out).");
        s.Notes.Add("Expert FFN = routed + shared experts. Dispatch is zero in process; for the grid it is derived in the grid-overhead section.");

        s.Summary.Add(("prefill FLOP/s / matmul FLOP/s", $"{Pct(efficiency)} ({F(prefill.Gflops)} of {F(gflops)} GFLOP/s)",
            "small per-expert matmuls (352-wide, ~24 tokens per expert at 256 tokens) and the gathers between them; the libtorch ops left around the kernels"));
        var first = (JsonObject)decode[0]!;
        var last = (JsonObject)decode[^1]!;
        s.Summary.Add(($"decode tok/s, batch {first["batch"]} / {last["batch"]} (model-core)", $"{first["tokens_per_second"]} / {last["tokens_per_second"]}",
            "batch 1: memory bandwidth (every activated weight read per token); large batches: per-expert loop over 64 experts with small token counts"));
        s.Summary.Add(($"decode FLOP/s / matmul FLOP/s, batch {string.Join(" / ", batches)}", string.Join(" / ", decodeShares.Select(Pct)),
            "batch 1 reads ~390 MB of weights per token for ~0.2 GFLOP (GEMV: bandwidth-bound); the share grows with the batch as weights are reused"));
        return s;
    }

    /// <summary>The float32 GEMM alone on the model's shapes (its config only; no weights loaded): prefill shapes on both
    /// cores and on one, decode shapes, weight bandwidth at one row.</summary>
    public static Section RunGemm(BenchContext c)
    {
        var s = new Section("gemm", "Batch-invariant float32 GEMM on the model's shapes");
        var cfg = ModelCore.Config.ModelConfig.Load(Path.Combine(c.ModelDir, "config.json"));
        double gflops = ModelCoreBench.MatmulGflops(reps: c.Quick ? 10 : 30);
        c.Log($"matmul: {gflops:F1} GFLOP/s");
        s.Data["matmul_gflops"] = Num(gflops, 2);
        GemmShapes(c, s, gflops, cfg);
        // One core each (KernelParallel and libtorch's intra-op threads): the kernels' own efficiency, less exposed to
        // how each runtime's threads cope with a busy machine.
        int threads = KernelParallel.Threads, torchThreads = get_num_threads();
        try
        {
            KernelParallel.Threads = 1;
            set_num_threads(1);
            var rows = new List<string[]>();
            double kernelSeconds = 0, libtorchSeconds = 0;
            foreach (var (name, m, n, k) in Shapes(cfg, 512))
            {
                var (tKernel, tLib, tLanes) = TimeShape(m, n, k, c.Quick ? 9 : 21);
                kernelSeconds += tKernel; libtorchSeconds += tLib;
                double flops = 2.0 * m * n * k;
                c.Log($"one core: gemm {name}: packed {flops / tKernel / 1e9:F1} GFLOP/s, libtorch {flops / tLib / 1e9:F1}, previous {flops / tLanes / 1e9:F1}");
                rows.Add([name, $"{m} x {k} x {n}", F(flops / tKernel / 1e9), F(flops / tLib / 1e9), F(flops / tLanes / 1e9), Pct(tLib / tKernel), Pct(tLib / tLanes)]);
            }
            s.Data["gemm_one_core_invariant_over_libtorch"] = Num(libtorchSeconds / kernelSeconds, 3);
            s.Markdown.Add("The prefill shapes on one core (KernelParallel.Threads = 1, libtorch set_num_threads(1)):");
            s.Markdown.Add("");
            s.Table(["shape", "M x K x N", "invariant GFLOP/s", "libtorch GFLOP/s", "previous GFLOP/s", "invariant / libtorch", "previous / libtorch"], rows);
            s.Summary.Add(("batch-invariant GEMM / libtorch matmul, prefill shapes, one core (time-weighted)", Pct(libtorchSeconds / kernelSeconds), "as above, without thread-pool effects"));
        }
        finally
        {
            KernelParallel.Threads = threads;
            set_num_threads(torchThreads);
        }
        return s;
    }

    /// <summary>Medians of interleaved timings: each round runs every candidate once, in turn, so a slow moment of the
    /// shared VM hits all of them alike. Returns seconds per call, one per candidate.</summary>
    public static double[] Interleaved(int rounds, params Action[] candidates)
    {
        var warm = Stopwatch.StartNew();
        while (warm.Elapsed.TotalSeconds < 0.3) foreach (var f in candidates) f();
        var times = candidates.Select(_ => new List<double>()).ToArray();
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < candidates.Length; i++)
            {
                var sw = Stopwatch.StartNew();
                candidates[i]();
                times[i].Add(sw.Elapsed.TotalSeconds);
            }
        return times.Select(ModelCoreBench.Median).ToArray();
    }

    /// <summary>The model's matmul shapes for a <paramref name="tokens"/>-row call (routed experts: their share of 512 prompt tokens).</summary>
    static List<(string Name, int M, int N, int K)> Shapes(ModelCore.Config.ModelConfig cfg, int tokens)
    {
        int d = cfg.HiddenSize, h = cfg.NumAttentionHeads;
        int qkvA = (cfg.QLoraRank ?? h * cfg.QkNopeHeadDim) + cfg.KvLoraRank + (cfg.QLoraRank is null ? (h + 1) : 1) * cfg.QkRopeHeadDim;
        int perExpert = Math.Max(1, 512 * cfg.NumExpertsPerTok / Math.Max(1, cfg.NRoutedExperts));
        var shapes = new List<(string Name, int M, int N, int K)>
        {
            ("q + kv_a (fused)", tokens, qkvA, d),
            ("o_proj", tokens, d, h * cfg.VHeadDim),
            ("dense MLP gate+up", tokens, 2 * cfg.IntermediateSize, d),
            ("dense MLP down", tokens, d, cfg.IntermediateSize),
            ("shared experts gate+up", tokens, 2 * cfg.MoeIntermediateSize * cfg.NSharedExperts, d),
            ("lm_head", tokens, cfg.VocabSize, d),
        };
        if (tokens == 512)
        {
            shapes.Insert(5, ($"routed expert gate+up ({perExpert} tokens)", perExpert, 2 * cfg.MoeIntermediateSize, d));
            shapes.Insert(6, ($"routed expert down ({perExpert} tokens)", perExpert, d, cfg.MoeIntermediateSize));
        }
        return shapes;
    }

    /// <summary>One shape: the packed-panel GEMM, libtorch's matmul and the previous lane-order GEMM (<see cref="LaneGemm"/>),
    /// interleaved; seconds per call of each.</summary>
    static unsafe (double Packed, double Libtorch, double Lanes) TimeShape(int m, int n, int k, int rounds)
    {
        using var scope = NewDisposeScope();
        var x = randn(m, k);
        var dense = randn(n, k);
        using var packed = LinearWeight.Create(dense.clone(), WeightQuantization.None);
        var y = empty(m, n);
        var packedJob = packed.Job(TensorMemory.Pointer<float>(x), m, TensorMemory.Pointer<float>(y), n);
        var lanesJob = new MatmulJob(TensorMemory.Pointer<float>(dense), null, n, k, TensorMemory.Pointer<float>(x), m, TensorMemory.Pointer<float>(y), n);
        var t = Interleaved(rounds,
            () => InvariantGemm.Run(packedJob),
            () => { using var _ = NewDisposeScope(); linear(x, dense); },
            () => LaneGemm.Run(lanesJob));
        return (t[0], t[1], t[2]);
    }

    /// <summary>The batch-invariant GEMM against libtorch's matmul and the previous GEMM on the model's prefill shapes (a
    /// 512-token prompt) and decode shapes (1, 8, 32 rows), as GFLOP/s and as a fraction of the run's matmul ceiling;
    /// and the weight bytes read per second at one row against a memcpy probe.</summary>
    static void GemmShapes(BenchContext c, Section s, double ceiling, ModelCore.Config.ModelConfig cfg)
    {
        var rows = new List<string[]>();
        var data = new JsonArray();
        double flopsAll = 0, kernelSeconds = 0, libtorchSeconds = 0, lanesSeconds = 0;
        foreach (var (name, m, n, k) in Shapes(cfg, 512))
        {
            double flops = 2.0 * m * n * k;
            int rounds = (int)Math.Clamp(2e10 / flops, 7, c.Quick ? 41 : 121);
            var (tKernel, tLib, tLanes) = TimeShape(m, n, k, rounds);
            flopsAll += flops; kernelSeconds += tKernel; libtorchSeconds += tLib; lanesSeconds += tLanes;
            double gKernel = flops / tKernel / 1e9, gLib = flops / tLib / 1e9, gLanes = flops / tLanes / 1e9;
            c.Log($"gemm {name} [{m}x{k}]x[{k}x{n}]: packed {gKernel:F1} GFLOP/s, libtorch {gLib:F1}, previous {gLanes:F1} ({gKernel / gLib:P0} of libtorch)");
            rows.Add([name, $"{m} x {k} x {n}", F(gKernel), F(gLib), F(gLanes), Pct(gKernel / gLib), Pct(gLanes / gLib), Pct(gKernel / ceiling)]);
            data.Add(new JsonObject
            {
                ["shape"] = name, ["m"] = m, ["n"] = n, ["k"] = k,
                ["invariant_gflops"] = Num(gKernel, 2), ["libtorch_gflops"] = Num(gLib, 2), ["previous_gflops"] = Num(gLanes, 2),
                ["invariant_over_libtorch"] = Num(gKernel / gLib, 3), ["invariant_of_ceiling"] = Num(gKernel / ceiling, 3),
            });
        }
        double all = libtorchSeconds / kernelSeconds;
        s.Data["gemm_shapes"] = data;
        s.Data["gemm_invariant_over_libtorch"] = Num(all, 3);
        s.Data["gemm_previous_over_libtorch"] = Num(libtorchSeconds / lanesSeconds, 3);
        s.Data["gemm_invariant_of_ceiling"] = Num(flopsAll / kernelSeconds / 1e9 / ceiling, 3);
        s.Markdown.Add("");
        s.Markdown.Add("Batch-invariant float32 GEMM (`InvariantGemm`, packed panels) against libtorch's matmul and the previous lane-order GEMM on this model's prefill shapes (512-token prompt), one call each, both cores, interleaved medians:");
        s.Markdown.Add("");
        s.Table(["shape", "M x K x N", "invariant GFLOP/s", "libtorch GFLOP/s", "previous GFLOP/s", "invariant / libtorch", "previous / libtorch", "invariant / ceiling"], rows);
        s.Summary.Add(("batch-invariant GEMM / libtorch matmul, prefill shapes (time-weighted)",
            $"{Pct(all)} ({Pct(flopsAll / kernelSeconds / 1e9 / ceiling)} of the matmul ceiling; previous GEMM {Pct(libtorchSeconds / lanesSeconds)})",
            "packed 32-wide weight panels, 6 x 32 AVX-512 register tile (one fma chain per element in increasing k), K blocks of 256"));

        // Decode-sized calls: every projection at 1, 8 and 32 rows.
        var decodeRows = new List<string[]>();
        var decodeData = new JsonArray();
        foreach (int m in new[] { 1, 8, 32 })
        {
            double tKernelAll = 0, tLibAll = 0, tLanesAll = 0;
            foreach (var (name, _, n, k) in Shapes(cfg, m))
            {
                var (tKernel, tLib, tLanes) = TimeShape(m, n, k, c.Quick ? 41 : 121);
                tKernelAll += tKernel; tLibAll += tLib; tLanesAll += tLanes;
                decodeRows.Add([name, $"{m} x {k} x {n}", F(tKernel * 1e6, 0), F(tLib * 1e6, 0), F(tLanes * 1e6, 0), Pct(tLib / tKernel), Pct(tLib / tLanes)]);
                decodeData.Add(new JsonObject
                {
                    ["shape"] = name, ["m"] = m, ["n"] = n, ["k"] = k,
                    ["invariant_us"] = Num(tKernel * 1e6, 1), ["libtorch_us"] = Num(tLib * 1e6, 1), ["previous_us"] = Num(tLanes * 1e6, 1),
                });
            }
            c.Log($"gemm decode {m} rows, all shapes: packed {tKernelAll * 1e6:F0} us, libtorch {tLibAll * 1e6:F0} us, previous {tLanesAll * 1e6:F0} us");
            s.Data[$"gemm_decode_{m}_invariant_over_libtorch"] = Num(tLibAll / tKernelAll, 3);
        }
        s.Data["gemm_decode_shapes"] = decodeData;
        s.Markdown.Add("Decode-sized calls (same shapes at 1, 8 and 32 rows), microseconds per call (interleaved medians):");
        s.Markdown.Add("");
        s.Table(["shape", "M x K x N", "invariant us", "libtorch us", "previous us", "invariant speed / libtorch", "previous speed / libtorch"], decodeRows);

        WeightBandwidth(c, s, cfg);
    }

    /// <summary>Weight bytes read per second by one-row calls over the dense MLP's gate+up weight, cycling through enough
    /// copies (~256 MB) that none stays in cache, against a memcpy of as many bytes split over the cores.</summary>
    static unsafe void WeightBandwidth(BenchContext c, Section s, ModelCore.Config.ModelConfig cfg)
    {
        using var scope = NewDisposeScope();
        int n = 2 * cfg.IntermediateSize, k = cfg.HiddenSize;
        long bytes = (long)n * k * sizeof(float);
        int copies = (int)Math.Clamp((256L << 20) / bytes, 2, 64);
        var x = randn(1, k);
        var y = empty(1, n);
        var weights = Enumerable.Range(0, copies).Select(_ => LinearWeight.Create(randn(n, k), WeightQuantization.None)).ToArray();
        var denses = Enumerable.Range(0, copies).Select(_ => randn(n, k)).ToArray();
        var jobs = weights.Select(w => w.Job(TensorMemory.Pointer<float>(x), 1, TensorMemory.Pointer<float>(y), n)).ToArray();
        var lanes = denses.Select(d => new MatmulJob(TensorMemory.Pointer<float>(d), null, n, k, TensorMemory.Pointer<float>(x), 1, TensorMemory.Pointer<float>(y), n)).ToArray();
        long total = bytes * copies;
        var from = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)total, 64);
        var to = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)total, 64);
        try
        {
            new Span<byte>(from, (int)Math.Min(total, int.MaxValue)).Fill(1);
            new Span<byte>(to, (int)Math.Min(total, int.MaxValue)).Fill(2);
            var t = Interleaved(c.Quick ? 9 : 25,
                () => { foreach (var job in jobs) InvariantGemm.Run(job); },
                () => { using var _ = NewDisposeScope(); foreach (var d in denses) linear(x, d); },
                () => { foreach (var job in lanes) LaneGemm.Run(job); },
                () => KernelParallel.For(KernelParallel.Threads, i =>
                {
                    long slice = total / KernelParallel.Threads, start = i * slice, length = i == KernelParallel.Threads - 1 ? total - start : slice;
                    Buffer.MemoryCopy(from + start, to + start, length, length);
                }));
            double gbKernel = total / t[0] / 1e9, gbLib = total / t[1] / 1e9, gbLanes = total / t[2] / 1e9, gbCopy = total / t[3] / 1e9;
            c.Log($"one row over {copies} x {bytes >> 20} MiB weights: packed {gbKernel:F1} GB/s, libtorch {gbLib:F1}, previous {gbLanes:F1}; memcpy {gbCopy:F1} GB/s copied");
            s.Data["gemm_decode_weight_gbps"] = new JsonObject
            {
                ["invariant"] = Num(gbKernel, 2), ["libtorch"] = Num(gbLib, 2), ["previous"] = Num(gbLanes, 2), ["memcpy"] = Num(gbCopy, 2),
            };
            s.Markdown.Add($"One-row calls over {copies} copies of the dense MLP gate+up weight ({bytes >> 20} MiB each, cycled so none stays in cache): " +
                           $"weights read at {F(gbKernel)} GB/s (libtorch {F(gbLib)}, previous GEMM {F(gbLanes)}); a memcpy of as many bytes on every core copies {F(gbCopy)} GB/s.");
            s.Markdown.Add("");
            s.Summary.Add(("batch-invariant GEMM, one row: weight GB/s / memcpy GB/s", $"{Pct(gbKernel / gbCopy)} ({F(gbKernel)} / {F(gbCopy)} GB/s; libtorch {F(gbLib)})",
                "memory bandwidth: every weight byte read once per call"));
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(from);
            System.Runtime.InteropServices.NativeMemory.AlignedFree(to);
            foreach (var w in weights) w.Dispose();
        }
    }

    /// <summary>Prefill and batch-1 decode of the same checkpoint loaded without the kernels (libtorch everywhere), in the same run.</summary>
    static void KernelsVsLibtorch(BenchContext c, Section s, int prefillTokens, ModelCoreBench.PrefillResult withKernels)
    {
        c.Log("loading the model without kernels (libtorch only)");
        using var libtorch = DeepseekV2Model.Load(c.ModelDir, new ModelLoadOptions { UseKernels = false });
        var prefillLib = ModelCoreBench.Prefill(libtorch, prefillTokens, c.Quick ? 2 : 5);
        int context = c.Quick ? 64 : 512, steps = c.Quick ? 6 : 32;
        var decodeLib = ModelCoreBench.Decode(libtorch, 1, context, steps);
        var decodeKernels = ModelCoreBench.Decode(c.Model, 1, context, steps);
        c.Log($"prefill {prefillTokens}: kernels {withKernels.TokensPerSecond:F1} tok/s, libtorch only {prefillLib.TokensPerSecond:F1} tok/s; " +
              $"decode batch 1: kernels {decodeKernels.TokensPerSecond:F1} tok/s, libtorch only {decodeLib.TokensPerSecond:F1} tok/s");
        s.Data["libtorch_only"] = new JsonObject
        {
            ["prefill_tokens_per_second"] = Num(prefillLib.TokensPerSecond, 2),
            ["kernels_prefill_tokens_per_second"] = Num(withKernels.TokensPerSecond, 2),
            ["decode_batch1_tokens_per_second"] = Num(decodeLib.TokensPerSecond, 2),
            ["kernels_decode_batch1_tokens_per_second"] = Num(decodeKernels.TokensPerSecond, 2),
        };
        s.Summary.Add(("kernels on / libtorch only (prefill, batch-1 decode)",
            $"{Pct(withKernels.TokensPerSecond / prefillLib.TokensPerSecond)} / {Pct(decodeKernels.TokensPerSecond / decodeLib.TokensPerSecond)}",
            "same checkpoint, loaded with ModelLoadOptions.UseKernels false (libtorch matmuls and attention ops)"));
    }
}
