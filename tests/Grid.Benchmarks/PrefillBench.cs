using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Benchmarks;

/// <summary>
/// Prefill attention (issue 12): the C# kernel (kv_b_proj expansion through the batch-invariant GEMM, then
/// <see cref="PrefillAttention"/>) against the libtorch ops it replaces, on the model's attention shapes, as GFLOP/s of
/// the useful causal work and as a share of the run's matmul ceiling; then the model's prefill with the kernel and with
/// the libtorch attention (<see cref="ModelLoadOptions.PrefillAttentionKernel"/> false), interleaved, split by StepProfile phase.
/// </summary>
public static class PrefillBench
{
    public static Section Run(BenchContext c)
    {
        var s = new Section("prefill", "Prefill attention: C# kernel vs libtorch");
        var cfg = c.Model.Config;
        c.Log($"load average {LoadAverage()}");
        s.Data["load_average_before"] = LoadAverage();

        var rows = new List<string[]>();
        var data = new JsonArray();
        foreach (int t in new[] { 256, 512 })
        {
            var (ceiling, kernel, attentionOnly, expansion, libtorch, flops, attentionFlops) = TimeAttention(cfg, t, c.Quick ? 9 : 21);
            double gK = flops / kernel / 1e9, gA = attentionFlops / attentionOnly / 1e9, gE = (flops - attentionFlops) / expansion / 1e9, gL = flops / libtorch / 1e9;
            c.Log($"prefill attention T={t} (matmul {ceiling:F1} GFLOP/s interleaved): kernel {kernel * 1e3:F2} ms ({gK:F1} GFLOP/s; attention part {attentionOnly * 1e3:F2} ms, {gA:F1}; expansion {expansion * 1e3:F2} ms, {gE:F1}), libtorch {libtorch * 1e3:F2} ms ({gL:F1} GFLOP/s): {libtorch / kernel:F2}x");
            rows.Add([t.ToString(), F(ceiling), F(kernel * 1e3, 2), F(libtorch * 1e3, 2), F(libtorch / kernel, 2) + "×", F(gK), Pct(gK / ceiling), F(gA), Pct(gA / ceiling), F(gE), Pct(gE / ceiling), F(gL), Pct(gL / ceiling)]);
            data.Add(new JsonObject
            {
                ["tokens"] = t, ["matmul_gflops"] = Num(ceiling, 2), ["kernel_ms"] = Num(kernel * 1e3, 3), ["libtorch_ms"] = Num(libtorch * 1e3, 3),
                ["kernel_gflops"] = Num(gK, 2), ["kernel_attention_part_gflops"] = Num(gA, 2), ["kernel_expansion_gflops"] = Num(gE, 2), ["libtorch_gflops"] = Num(gL, 2),
                ["kernel_of_ceiling"] = Num(gK / ceiling, 3), ["speedup"] = Num(libtorch / kernel, 3),
            });
        }
        s.Data["attention"] = data;
        s.Markdown.Add($"One layer's prefill attention on this model's shapes ({cfg.NumAttentionHeads} heads, kv_lora_rank {cfg.KvLoraRank}, " +
                       $"nope {cfg.QkNopeHeadDim}, rope {cfg.QkRopeHeadDim}, v {cfg.VHeadDim}), a whole prompt of T tokens, interleaved medians with a 1024³ " +
                       "float32 matmul (the ceiling); FLOPs: the kv_b expansion (2·T·kvr·H·(nope+v)) plus the causal score and value work each query sees.");
        s.Markdown.Add("");
        s.Table(["T", "matmul GFLOP/s", "kernel ms", "libtorch ms", "speedup", "kernel GFLOP/s", "of ceiling", "attention part GFLOP/s", "of ceiling", "expansion GFLOP/s", "of ceiling", "libtorch GFLOP/s", "of ceiling"], rows);

        ModelPrefill(c, s, c.Quick ? 3 : 7);
        s.Data["load_average_after"] = LoadAverage();
        s.Notes.Add($"Load average (1, 5, 15 min) before: {s.Data["load_average_before"]}, after: {s.Data["load_average_after"]}.");
        return s;
    }

    static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    /// <summary>A 1024³ float32 matmul's GFLOP/s (the ceiling, timed interleaved with the rest); seconds per call of the kernel (expansion + attention), its attention part alone, its expansion alone and the libtorch ops;
    /// and the useful FLOPs of the whole and of the attention part.</summary>
    static unsafe (double CeilingGflops, double Kernel, double AttentionOnly, double Expansion, double Libtorch, double Flops, double AttentionFlops) TimeAttention(ModelConfig cfg, int t, int rounds)
    {
        using var scope = NewDisposeScope();
        int h = cfg.NumAttentionHeads, nope = cfg.QkNopeHeadDim, rope = cfg.QkRopeHeadDim, v = cfg.VHeadDim, kvr = cfg.KvLoraRank;
        float scale = 1f / MathF.Sqrt(nope + rope);
        var qNope = randn(t, h, nope);
        var qRope = randn(t, h, rope);
        var cache = randn(t, kvr + rope);
        var kvB = randn(h * (nope + v), kvr) * 0.05;
        using var packed = LinearWeight.Create(kvB.clone(), WeightQuantization.None);
        var output = empty(t, h * v);
        var kvFixed = linear(cache.narrow(1, 0, kvr), kvB).contiguous();
        long latent = kvr + rope;
        float* qn = TensorMemory.Pointer<float>(qNope), qr = TensorMemory.Pointer<float>(qRope), o = TensorMemory.Pointer<float>(output);
        float* kRope = TensorMemory.Pointer<float>(cache) + kvr, kvf = TensorMemory.Pointer<float>(kvFixed);
        var masked = arange(t).unsqueeze(0).gt(arange(t).unsqueeze(1)).unsqueeze(0);
        var a = randn(1024, 1024);
        var b = randn(1024, 1024);
        var times = KernelBench.Interleaved(rounds,
            () => { using var _ = NewDisposeScope(); a.matmul(b); },   // the ceiling, interleaved with the candidates
            () =>
            {
                // MlaAttention.AttendPrefill: c_KV copied out of the cache rows, expanded into the reused buffer, attention.
                using var _ = NewDisposeScope();
                var cKV = cache.narrow(1, 0, kvr).contiguous();
                float* kv = PrefillAttention.ExpansionBuffer((long)t * h * (nope + v));
                InvariantGemm.Run(packed.Job(TensorMemory.Pointer<float>(cKV), t, kv, h * (nope + v)));
                PrefillAttention.Run(qn, qr, kv, kRope, latent, t, 0, h, nope, rope, v, scale, o, InvariantGemm.BestPath);
            },
            () => PrefillAttention.Run(qn, qr, kvf, kRope, latent, t, 0, h, nope, rope, v, scale, o, InvariantGemm.BestPath),
            () =>
            {
                using var _ = NewDisposeScope();
                var cKV = cache.narrow(1, 0, kvr).contiguous();
                InvariantGemm.Run(packed.Job(TensorMemory.Pointer<float>(cKV), t, PrefillAttention.ExpansionBuffer((long)t * h * (nope + v)), h * (nope + v)));
            },
            () =>
            {
                // MlaAttention.AttendNaiveLibtorch with a dense kv_b_proj: the ops the kernel replaces.
                using var _ = NewDisposeScope();
                var kv = linear(cache.narrow(1, 0, kvr), kvB).view(t, h, nope + v);
                var kNope = kv.narrow(2, 0, nope).permute(1, 2, 0);
                var values = kv.narrow(2, nope, v).transpose(0, 1);
                var scores = qNope.transpose(0, 1).bmm(kNope) + qRope.transpose(0, 1).matmul(cache.narrow(1, kvr, rope).t());
                var probs = softmax(scores.mul(scale).masked_fill(masked, float.NegativeInfinity), -1);
                probs.bmm(values).transpose(0, 1).reshape(t, h * v);
            });
        double attention = PrefillAttention.Flops(t, 0, h, nope, rope, v);
        return (2.0 * 1024 * 1024 * 1024 / times[0] / 1e9, times[1], times[2], times[3], times[4], attention + 2.0 * t * kvr * h * (nope + v), attention);
    }

    /// <summary>A whole-prompt prefill (256 tokens; 512 in the full run) with the prefill attention kernel and with the
    /// libtorch attention, interleaved, phases from StepProfile (medians per phase).</summary>
    static void ModelPrefill(BenchContext c, Section s, int reps)
    {
        int tokens = c.Quick ? 256 : 512;
        c.Log("loading the model with the libtorch prefill attention");
        using var libtorch = DeepseekV2Model.Load(c.ModelDir, new ModelLoadOptions { PrefillAttentionKernel = false });
        var models = new[] { ("kernel", c.Model), ("libtorch attention", libtorch) };
        var prompt = ModelCoreBench.Prompt(c.Model.Config, tokens);
        var totals = models.Select(_ => new List<double>()).ToArray();
        var phases = models.Select(_ => new Dictionary<string, List<double>>()).ToArray();
        for (int r = 0; r < reps + 1; r++)
            for (int i = 0; i < models.Length; i++)
            {
                var model = models[i].Item2;
                var profile = new StepProfile();
                var seq = model.Cache!.Create();
                var sw = Stopwatch.StartNew();
                using (model.Forward([new SequenceChunk(seq, prompt)], profile: profile)) { }
                double seconds = sw.Elapsed.TotalSeconds;
                model.Cache.Release(seq);
                if (r == 0) continue;   // warm-up
                totals[i].Add(seconds);
                foreach (var (phase, time) in profile.Time)
                    (phases[i].TryGetValue(phase, out var list) ? list : phases[i][phase] = []).Add(time.TotalMilliseconds);
            }
        double kernelS = ModelCoreBench.Median(totals[0]), libS = ModelCoreBench.Median(totals[1]);
        c.Log($"prefill {tokens}: kernel {tokens / kernelS:F1} tok/s ({kernelS * 1e3:F0} ms), libtorch attention {tokens / libS:F1} tok/s ({libS * 1e3:F0} ms)");
        string[] shown = [StepProfile.Attention, StepProfile.AttentionNorm, StepProfile.AttentionProject, StepProfile.AttentionCache,
            StepProfile.AttentionScores, StepProfile.AttentionOutput, StepProfile.Residual];
        var rows = new List<string[]> { new[] { "total", F(kernelS * 1e3, 0), F(libS * 1e3, 0) } };
        var json = new JsonObject();
        foreach (var phase in shown.Concat(phases[0].Keys.Except(shown).Order()))
        {
            double a = phases[0].TryGetValue(phase, out var la) ? ModelCoreBench.Median(la) : 0, b = phases[1].TryGetValue(phase, out var lb) ? ModelCoreBench.Median(lb) : 0;
            rows.Add([phase, F(a), F(b)]);
            json[phase] = new JsonObject { ["kernel_ms"] = Num(a, 2), ["libtorch_ms"] = Num(b, 2) };
            c.Log($"  {phase}: kernel {a:F1} ms, libtorch attention {b:F1} ms");
        }
        s.Data["model_prefill"] = new JsonObject
        {
            ["tokens"] = tokens, ["kernel_tokens_per_second"] = Num(tokens / kernelS, 2), ["libtorch_tokens_per_second"] = Num(tokens / libS, 2),
            ["kernel_gflops"] = Num(ModelCoreBench.PrefillFlops(c.Model.Config, tokens) / kernelS / 1e9, 2), ["phases_ms"] = json,
        };
        s.Markdown.Add("");
        s.Markdown.Add($"The model's prefill of {tokens} tokens, one chunk: **{F(tokens / kernelS)} tok/s** with the kernel, {F(tokens / libS)} tok/s with the libtorch attention " +
                       $"({F(libS / kernelS, 2)}×); interleaved, {reps} reps, medians per StepProfile phase (ms):");
        s.Markdown.Add("");
        s.Table(["phase", "kernel", "libtorch attention"], rows);
        s.Summary.Add(($"prefill {tokens} tokens: prefill attention kernel / libtorch attention", $"{F(tokens / kernelS)} / {F(tokens / libS)} tok/s ({F(libS / kernelS, 2)}×)",
            "kv_b expansion through the GEMM; per head and block of queries, scores over the keys each row sees only, fixed-order softmax, values"));
    }
}
