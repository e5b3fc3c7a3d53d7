using System.Diagnostics;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using LLama;
using LLama.Common;
using LLama.Native;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// llama.cpp in the same run: the benchmark checkpoint written as a float32 GGUF (<see cref="GgufExport"/>), loaded
/// through LLamaSharp (CPU backend, 2 threads, float32 KV cache), against Grid model-core (the <c>--engine local</c>
/// path) on the same prompt ids: prefill of the 512-token prompt, batch-1 greedy decode of 64 tokens, batched decode,
/// greedy token agreement; with the machine's memory read bandwidth and the libtorch matmul ceiling measured in the
/// same run, so every figure is reported as a ratio.
/// </summary>
public static class LlamaCppBench
{
    const int Threads = 2;

    static readonly List<string> NativeLog = new();
    static bool _configured;

    public sealed record EngineRun(double PrefillTokensPerSecond, double DecodeTokensPerSecond, int[] Tokens);

    public static Section Run(BenchContext c)
    {
        var s = new Section("llamacpp", "Against llama.cpp (same checkpoint, same run)");
        int promptTokens = c.Quick ? 256 : 512, steps = c.Quick ? 16 : 64, reps = c.Quick ? 2 : 5, decodeReps = c.Quick ? 1 : 3;
        int batch = 8, batchContext = c.Quick ? 64 : 128, batchSteps = c.Quick ? 8 : 32;

        c.Log("memory read bandwidth (512 MiB buffer, 2 threads)");
        double bandwidth = ReadBandwidthGBps(512L << 20, c.Quick ? 3 : 7);
        c.Log($"memory read: {bandwidth:F1} GB/s");
        double gflops = c.MatmulGflops ?? ModelCoreBench.MatmulGflops(reps: c.Quick ? 10 : 30);
        c.Log($"matmul ceiling: {gflops:F1} GFLOP/s");

        var model = c.Model;
        var config = model.Config;
        var prompt = ModelCoreBench.Prompt(config, promptTokens);
        var gguf = EnsureGguf(c);
        Configure();
        var llamaParams = new ModelParams(gguf)
        {
            ContextSize = (uint)Math.Max(promptTokens + steps + 8, batch * (batchContext + batchSteps + 2)),
            BatchSize = (uint)Math.Max(promptTokens, batch * batchContext),
            UBatchSize = (uint)promptTokens,
            SeqMax = (uint)batch,
            Threads = Threads,
            BatchThreads = Threads,
            GpuLayerCount = 0,
            TypeK = GGMLType.GGML_TYPE_F32,
            TypeV = GGMLType.GGML_TYPE_F32,
        };
        EngineRun grid, llama;
        double gridBatched, llamaBatched;
        string systemInfo;
        using (var weights = LLamaWeights.LoadFromFile(llamaParams))
        using (var context = weights.CreateContext(llamaParams))
        {
            systemInfo = Marshal.PtrToStringAnsi(NativeApi.llama_print_system_info()) ?? "";
            c.Log($"llama.cpp: {systemInfo.Trim()}");
            // The two engines take turns, rep by rep, so a change in the machine's load hits both alike.
            c.Log($"prefill {promptTokens} tokens, {reps} reps each, alternating (after one warm-up each)");
            var gridPrefill = new List<double>();
            var llamaPrefill = new List<double>();
            for (int r = 0; r < reps + 1; r++)
            {
                double g = GridPrefillSeconds(model, prompt), l = LlamaPrefill(context, prompt).Seconds;
                if (r == 0) continue;
                gridPrefill.Add(g);
                llamaPrefill.Add(l);
                c.Log($"  prefill rep {r}: grid {promptTokens / g:F1} tok/s, llama.cpp {promptTokens / l:F1} tok/s");
            }
            c.Log($"decode {steps} tokens at batch 1, {decodeReps} reps each, alternating");
            var gridRates = new List<double>();
            var llamaRates = new List<double>();
            int[]? gridTokens = null, llamaTokens = null;
            for (int r = 0; r < decodeReps; r++)
            {
                var (gRate, gTokens) = GridDecode(model, prompt, steps);
                var (lRate, lTokens) = LlamaDecode(context, prompt, steps);
                gridRates.Add(gRate);
                llamaRates.Add(lRate);
                gridTokens ??= gTokens;
                llamaTokens ??= lTokens;
                c.Log($"  decode rep {r + 1}: grid {gRate:F1} tok/s, llama.cpp {lRate:F1} tok/s");
            }
            grid = new EngineRun(promptTokens / ModelCoreBench.Median(gridPrefill), ModelCoreBench.Median(gridRates), gridTokens!);
            llama = new EngineRun(promptTokens / ModelCoreBench.Median(llamaPrefill), ModelCoreBench.Median(llamaRates), llamaTokens!);
            c.Log($"grid: prefill {grid.PrefillTokensPerSecond:F1} tok/s, decode {grid.DecodeTokensPerSecond:F1} tok/s; " +
                  $"llama.cpp: prefill {llama.PrefillTokensPerSecond:F1} tok/s, decode {llama.DecodeTokensPerSecond:F1} tok/s");
            c.Log($"batch {batch} decode (context {batchContext}, {batchSteps} steps)");
            gridBatched = ModelCoreBench.Decode(model, batch, batchContext, batchSteps).TokensPerSecond;
            llamaBatched = LlamaBatched(context, config, batch, batchContext, batchSteps);
            c.Log($"batch {batch}: grid {gridBatched:F1} tok/s, llama.cpp {llamaBatched:F1} tok/s");
        }

        int agree = grid.Tokens.Zip(llama.Tokens).Count(p => p.First == p.Second);
        int prefixAgree = grid.Tokens.Zip(llama.Tokens).TakeWhile(p => p.First == p.Second).Count();
        c.Log($"greedy tokens agree: {agree}/{grid.Tokens.Length} (first {prefixAgree} in a row)");
        if (prefixAgree < grid.Tokens.Length)
            c.Log($"grid  {string.Join(",", grid.Tokens)}\nllama {string.Join(",", llama.Tokens)}");

        double weightBytes = ActivatedWeightBytes(config);
        double gridGBps = grid.DecodeTokensPerSecond * weightBytes / 1e9;
        double llamaGBps = llama.DecodeTokensPerSecond * (weightBytes + GgufExport.ExtraBytesPerToken(config)) / 1e9;
        double prefillFlops = ModelCoreBench.PrefillFlops(config, promptTokens);
        double gridPrefillGflops = grid.PrefillTokensPerSecond / promptTokens * prefillFlops / 1e9;
        double llamaPrefillGflops = llama.PrefillTokensPerSecond / promptTokens * prefillFlops / 1e9;

        s.Data["memory_read_gbps"] = Num(bandwidth, 2);
        s.Data["matmul_gflops"] = Num(gflops, 2);
        s.Data["activated_weight_bytes_per_token"] = (long)weightBytes;
        s.Data["prompt_tokens"] = promptTokens;
        s.Data["decode_steps"] = steps;
        s.Data["llama_system_info"] = systemInfo.Trim();
        s.Data["greedy_agreement"] = new JsonObject { ["equal"] = agree, ["of"] = grid.Tokens.Length, ["leading"] = prefixAgree };
        s.Data["grid"] = new JsonObject
        {
            ["prefill_tokens_per_second"] = Num(grid.PrefillTokensPerSecond, 2),
            ["decode_tokens_per_second"] = Num(grid.DecodeTokensPerSecond, 2),
            [$"decode_batch{batch}_tokens_per_second"] = Num(gridBatched, 2),
            ["tokens"] = new JsonArray(grid.Tokens.Select(t => (JsonNode)t).ToArray()),
        };
        s.Data["llama_cpp"] = new JsonObject
        {
            ["prefill_tokens_per_second"] = Num(llama.PrefillTokensPerSecond, 2),
            ["decode_tokens_per_second"] = Num(llama.DecodeTokensPerSecond, 2),
            [$"decode_batch{batch}_tokens_per_second"] = Num(llamaBatched, 2),
            ["tokens"] = new JsonArray(llama.Tokens.Select(t => (JsonNode)t).ToArray()),
        };

        s.Markdown.Add($"Memory read bandwidth **{F(bandwidth)} GB/s** (512 MiB buffer summed by {Threads} threads), matmul ceiling " +
                       $"**{F(gflops)} GFLOP/s** (libtorch float32 1024³). Batch-1 decode reads {weightBytes / 1e6:F0} MB of activated weights per token.");
        s.Markdown.Add("");
        s.Table(["figure", "Grid model-core", "llama.cpp", "Grid / llama.cpp"],
        [
            [$"prefill, {promptTokens}-token prompt (tok/s)", F(grid.PrefillTokensPerSecond), F(llama.PrefillTokensPerSecond), Ratio(grid.PrefillTokensPerSecond, llama.PrefillTokensPerSecond)],
            ["prefill GFLOP/s (of matmul ceiling)", $"{F(gridPrefillGflops)} ({Pct(gridPrefillGflops / gflops)})", $"{F(llamaPrefillGflops)} ({Pct(llamaPrefillGflops / gflops)})", ""],
            [$"decode, batch 1, {steps} tokens (tok/s)", F(grid.DecodeTokensPerSecond, 2), F(llama.DecodeTokensPerSecond, 2), Ratio(grid.DecodeTokensPerSecond, llama.DecodeTokensPerSecond)],
            ["decode weight GB/s (of memory read bandwidth)", $"{F(gridGBps, 2)} ({Pct(gridGBps / bandwidth)})", $"{F(llamaGBps, 2)} ({Pct(llamaGBps / bandwidth)})", ""],
            [$"decode, batch {batch}, context {batchContext} (aggregate tok/s)", F(gridBatched), F(llamaBatched), Ratio(gridBatched, llamaBatched)],
            ["greedy tokens equal (prefill + decode)", $"{agree}/{grid.Tokens.Length}", $"leading run {prefixAgree}", ""],
        ]);
        s.Notes.Add($"Same checkpoint, same prompt ids (BOS + {promptTokens - 1}), {Threads} threads each, float32 weights and KV cache; llama.cpp through LLamaSharp " +
                    $"{LlamaSharpVersion()} with ids fed directly (no text). Prefill: median of {reps}; decode: median of {decodeReps} runs of {steps} greedy steps.");
        s.Notes.Add("The model has no query compression; llama.cpp's loader insists on one for an 8-layer deepseek2, so the GGUF carries an exactly " +
                    $"equivalent identity q_a: llama.cpp reads {GgufExport.ExtraBytesPerToken(config) / 1e6:F0} MB more per token (counted in its GB/s above) and does one more d×d matmul per layer.");
        s.Summary.Add(("Grid / llama.cpp prefill, decode batch 1, decode batch " + batch,
            $"{Ratio(grid.PrefillTokensPerSecond, llama.PrefillTokensPerSecond)} / {Ratio(grid.DecodeTokensPerSecond, llama.DecodeTokensPerSecond)} / {Ratio(gridBatched, llamaBatched)}",
            "same run, same checkpoint and prompt; greedy tokens equal " + $"{agree}/{grid.Tokens.Length}"));
        s.Summary.Add(("batch-1 decode weight bandwidth / memory read bandwidth, Grid / llama.cpp",
            $"{Pct(gridGBps / bandwidth)} / {Pct(llamaGBps / bandwidth)} (of {F(bandwidth)} GB/s)",
            "Grid: the step's work between the weight reads (attention, routing, small calls between kernels); llama.cpp: one graph per step, fused expert matmul"));
        s.Summary.Add(("prefill GFLOP/s / matmul ceiling, Grid / llama.cpp",
            $"{Pct(gridPrefillGflops / gflops)} / {Pct(llamaPrefillGflops / gflops)} (of {F(gflops)} GFLOP/s)",
            "per-expert matmuls of ~24-48 rows (64 experts, top-6) and the gathers between them"));
        return s;
    }

    static string LlamaSharpVersion() =>
        (System.Reflection.CustomAttributeExtensions.GetCustomAttribute<System.Reflection.AssemblyInformationalVersionAttribute>(typeof(LLamaWeights).Assembly)?.InformationalVersion ?? "?").Split('+')[0];

    static string Ratio(double a, double b) => b > 0 ? $"{a / b:F2}×" : "-";

    /// <summary>Bytes of weights one batch-1 decode step reads: every non-expert matrix, the top-K and shared experts, lm_head (float32).</summary>
    public static double ActivatedWeightBytes(ModelConfig c) => ModelCoreBench.PrefillFlops(c, 1, 0) / 2 * sizeof(float);

    /// <summary>Median GB/s of summing a large float buffer with <see cref="Threads"/> threads (what batch-1 decode needs: reading weights once).</summary>
    public static double ReadBandwidthGBps(long bytes, int reps)
    {
        var buffer = GC.AllocateUninitializedArray<float>((int)(bytes / sizeof(float)), pinned: true);
        buffer.AsSpan().Fill(1f); // touch every page
        double sink = 0;
        var times = new List<double>();
        for (int r = 0; r < reps + 1; r++)
        {
            var sw = Stopwatch.StartNew();
            var parts = new double[Threads];
            Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, t =>
            {
                int chunk = buffer.Length / Threads;
                var span = buffer.AsSpan(t * chunk, t == Threads - 1 ? buffer.Length - t * chunk : chunk);
                parts[t] = Sum(span);
            });
            if (r > 0) times.Add(sw.Elapsed.TotalSeconds);
            sink += parts.Sum();
        }
        if (sink < 0) Console.Error.WriteLine(sink); // keeps the sums observable
        return bytes / ModelCoreBench.Median(times) / 1e9;
    }

    /// <summary>Sum of a span with 4 vector accumulators; compiled optimised at once (tier-0 code would not reach memory speed).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static double Sum(ReadOnlySpan<float> span)
    {
        var vectors = MemoryMarshal.Cast<float, Vector<float>>(span);
        Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i + 4 <= vectors.Length; i += 4)
        {
            a0 += vectors[i]; a1 += vectors[i + 1]; a2 += vectors[i + 2]; a3 += vectors[i + 3];
        }
        for (; i < vectors.Length; i++) a0 += vectors[i];
        return Vector.Sum(a0 + a1 + a2 + a3);
    }

    /// <summary>One prefill of the prompt on Grid model-core (what <c>--engine local</c> runs) into a fresh sequence.</summary>
    static double GridPrefillSeconds(DeepseekV2Model model, int[] prompt)
    {
        var seq = model.Cache!.Create();
        try
        {
            var sw = Stopwatch.StartNew();
            using (model.Forward([new SequenceChunk(seq, prompt)])) { }
            return sw.Elapsed.TotalSeconds;
        }
        finally { model.Cache.Release(seq); }
    }

    /// <summary>Prefill (untimed), then <paramref name="steps"/> timed greedy steps: tok/s and the 1 + steps greedy tokens.</summary>
    static (double Rate, int[] Tokens) GridDecode(DeepseekV2Model model, int[] prompt, int steps)
    {
        var seq = model.Cache!.Create();
        try
        {
            var run = new List<int>();
            using (var o = model.Forward([new SequenceChunk(seq, prompt)]))
                run.Add(Sampler.Argmax(o.Logits[0].data<float>().ToArray()));
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++)
                using (var o = model.Forward([new SequenceChunk(seq, [run[^1]])]))
                    run.Add(Sampler.Argmax(o.Logits[0].data<float>().ToArray()));
            return (steps / sw.Elapsed.TotalSeconds, run.ToArray());
        }
        finally { model.Cache.Release(seq); }
    }

    /// <summary>One prefill of the prompt (one llama_decode of all its ids) into an emptied KV cache, and the greedy next token.</summary>
    static (double Seconds, int Next) LlamaPrefill(LLamaContext context, int[] prompt)
    {
        var handle = context.NativeHandle;
        handle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        var sw = Stopwatch.StartNew();
        Check(handle.Decode(batch));
        handle.Synchronize();
        double seconds = sw.Elapsed.TotalSeconds;
        return (seconds, Argmax(handle.GetLogitsIth(batch.TokenCount - 1)));
    }

    static (double Rate, int[] Tokens) LlamaDecode(LLamaContext context, int[] prompt, int steps)
    {
        var handle = context.NativeHandle;
        var run = new List<int> { LlamaPrefill(context, prompt).Next };
        var batch = new LLamaBatch();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            batch.Clear();
            batch.Add(run[^1], prompt.Length + i, LLamaSeqId.Zero, true);
            Check(handle.Decode(batch));
            run.Add(Argmax(handle.GetLogitsIth(0)));
        }
        double rate = steps / sw.Elapsed.TotalSeconds;
        handle.MemoryClear(true);
        return (rate, run.ToArray());
    }

    /// <summary>Aggregate greedy decode tok/s of <paramref name="batch"/> sequences decoded together (one llama_batch per step).</summary>
    static double LlamaBatched(LLamaContext context, ModelConfig config, int batch, int promptTokens, int steps)
    {
        var handle = context.NativeHandle;
        handle.MemoryClear(true);
        var b = new LLamaBatch();
        var next = new int[batch];
        for (int q = 0; q < batch; q++)
        {
            var prompt = ModelCoreBench.Prompt(config, promptTokens, q);
            b.Clear();
            for (int i = 0; i < prompt.Length; i++) b.Add(prompt[i], i, (LLamaSeqId)q, i == prompt.Length - 1);
            Check(handle.Decode(b));
            next[q] = Argmax(handle.GetLogitsIth(b.TokenCount - 1));
        }
        var sw = new Stopwatch();
        for (int step = 0; step < steps + 1; step++)
        {
            if (step == 1) sw.Start(); // step 0 warms up
            b.Clear();
            for (int q = 0; q < batch; q++) b.Add(next[q], promptTokens + step, (LLamaSeqId)q, true);
            Check(handle.Decode(b));
            for (int q = 0; q < batch; q++) next[q] = Argmax(handle.GetLogitsIth(q));
        }
        double rate = batch * steps / sw.Elapsed.TotalSeconds;
        handle.MemoryClear(true);
        return rate;
    }

    static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {r}; log tail:\n{string.Join("\n", NativeLog.TakeLast(20))}");
    }

    static int Argmax(Span<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>The GGUF of the run's checkpoint, written next to it on first use.</summary>
    static string EnsureGguf(BenchContext c)
    {
        var path = c.ModelDir.TrimEnd('/') + $"-f32-{GgufExport.LayoutVersion}.gguf";
        if (File.Exists(path)) return path;
        var sw = Stopwatch.StartNew();
        GgufExport.Write(c.ModelDir, path, c.Log);
        c.Log($"wrote {path} ({new FileInfo(path).Length / 1e9:F2} GB) in {sw.Elapsed.TotalSeconds:F0} s");
        return path;
    }

    /// <summary>Native llama.cpp messages go to a buffer (shown when a load or decode fails), not the console.</summary>
    static void Configure()
    {
        if (_configured) return;
        _configured = true;
        NativeLibraryConfig.All.WithLogCallback((level, message) =>
        {
            lock (NativeLog)
            {
                NativeLog.Add(message.TrimEnd());
                if (NativeLog.Count > 2000) NativeLog.RemoveRange(0, 1000);
            }
            if (Environment.GetEnvironmentVariable("GRID_BENCH_LLAMA_LOG") == "1") Console.Error.Write(message);
        });
    }
}
