using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;
using static TorchSharp.torch;

namespace Grid.Benchmarks;

/// <summary>
/// The 8-bit kernels alone on the benchmark model's matrix shapes: GB/s of weight bytes read at M = 1 and 8 for int8,
/// FP8 and float32 (the batch-invariant GEMM), next to a read-bandwidth probe interleaved in the same repetitions, and
/// the 8-bit GEMM against the float32 one at M = 512. Each shape cycles through enough distinct matrices (≥ 48 MB of
/// 8-bit codes) that every call reads from memory, not from the caches.
/// </summary>
public static class QuantKernelBench
{
    static readonly (string Name, int N, int K)[] Shapes =
    [
        ("expert gate+up", 704, 1024), ("expert down", 1024, 352), ("q_proj", 1536, 1024), ("dense gate+up", 5632, 1024), ("dense down", 1024, 2816),
    ];

    static double ReadProbe(float[] a)
    {
        var sw = Stopwatch.StartNew();
        if (QuantBench.SumRead(a) <= 0) throw new InvalidOperationException("the read probe summed nothing");
        return a.Length * 4.0 / sw.Elapsed.TotalSeconds / 1e9;
    }

    public static unsafe Section Run(BenchContext c)
    {
        var s = new Section("quantkernel", "8-bit matmul kernels alone (model-core, in process)");
        int reps = c.Quick ? 7 : 15;
        var probe = GC.AllocateUninitializedArray<float>(64 << 20 >> 2, pinned: true);   // 64 MB
        Array.Fill(probe, 1f);
        var rows = new List<string[]>();
        var json = new JsonArray();
        c.Log($"load average: {File.ReadAllText("/proc/loadavg").Trim()}");
        foreach (var (name, n, k) in Shapes)
        {
            int copies = Math.Max(4, (48 << 20) / (n * k));
            using var scope = NewDisposeScope();
            var weights = Enumerable.Range(0, copies).Select(i => randn(n, k) * 0.05f).ToArray();
            var formats = new[] { WeightQuantization.None, WeightQuantization.Int8, WeightQuantization.Fp8 };
            var linears = formats.Select(f => weights.Select(w => LinearWeight.Create(w.clone(), f)).ToArray()).ToArray();
            foreach (int m in new[] { 1, 8 })
            {
                var x = randn(m, k);
                var y = empty(m, n);
                float* xp = TensorMemory.Pointer<float>(x), yp = TensorMemory.Pointer<float>(y);
                var gbs = formats.Select(_ => new List<double>()).ToArray();
                var bw = new List<double>();
                for (int r = -1; r < reps; r++)
                {
                    double probeGbs = ReadProbe(probe);
                    if (r >= 0) bw.Add(probeGbs);
                    for (int f = 0; f < formats.Length; f++)
                    {
                        long bytes = 0;
                        var sw = Stopwatch.StartNew();
                        foreach (var l in linears[f])
                        {
                            var job = l.Job(xp, m, yp, n);
                            if (l.IsFloat32) InvariantGemm.Run(job); else QuantizedGemm.Run(job);
                            bytes += l.Bytes;
                        }
                        if (r >= 0) gbs[f].Add(bytes / sw.Elapsed.TotalSeconds / 1e9);
                    }
                }
                double read = ModelCoreBench.Median(bw);
                var med = gbs.Select(ModelCoreBench.Median).ToArray();
                double us(int f) => linears[f][0].Bytes / med[f] / 1e3;
                c.Log($"{name} [{n}x{k}] M={m}: read probe {read:F1} GB/s; float32 {med[0]:F1} GB/s ({med[0] / read:P0}, {us(0):F0} us); int8 {med[1]:F1} GB/s ({med[1] / read:P0}, {us(1):F0} us); fp8 {med[2]:F1} GB/s ({med[2] / read:P0}, {us(2):F0} us)");
                rows.Add([name, $"{n}x{k}", m.ToString(), F(read), $"{F(med[0])} ({Pct(med[0] / read)})", $"{F(med[1])} ({Pct(med[1] / read)})", $"{F(med[2])} ({Pct(med[2] / read)})", F(us(0) / us(1), 2), F(us(0) / us(2), 2)]);
                json.Add(new JsonObject { ["matrix"] = name, ["n"] = n, ["k"] = k, ["m"] = m, ["read_probe_gbs"] = Num(read, 2), ["float32_gbs"] = Num(med[0], 2), ["int8_gbs"] = Num(med[1], 2), ["fp8_gbs"] = Num(med[2], 2) });
            }
            foreach (var set in linears) foreach (var l in set) l.Dispose();
        }
        // Prefill-sized GEMM: M = 512 over one matrix of each kind (compute-bound), 8-bit vs float32.
        {
            const int m = 512, n = 1536, k = 1024;
            using var scope = NewDisposeScope();
            var w = randn(n, k) * 0.05f;
            var f32 = LinearWeight.Create(w.clone(), WeightQuantization.None);
            var i8 = LinearWeight.Create(w.clone(), WeightQuantization.Int8);
            var f8 = LinearWeight.Create(w.clone(), WeightQuantization.Fp8);
            var x = randn(m, k);
            var t = new[] { new List<double>(), new List<double>(), new List<double>() };
            var all = new[] { f32, i8, f8 };
            for (int r = -1; r < Math.Max(3, reps / 2); r++)
                for (int i = 0; i < 3; i++)
                {
                    var sw = Stopwatch.StartNew();
                    all[i].Forward(x).Dispose();
                    if (r >= 0) t[i].Add(sw.Elapsed.TotalSeconds);
                }
            var med = t.Select(ModelCoreBench.Median).ToArray();
            double gf(int i) => 2.0 * m * n * k / med[i] / 1e9;
            c.Log($"GEMM M={m} [{n}x{k}]: float32 {gf(0):F1} GFLOP/s, int8 {gf(1):F1} ({med[0] / med[1]:F2}x float32's speed), fp8 {gf(2):F1} ({med[0] / med[2]:F2}x)");
            s.Data["gemm_m512"] = new JsonObject { ["float32_gflops"] = Num(gf(0), 2), ["int8_gflops"] = Num(gf(1), 2), ["fp8_gflops"] = Num(gf(2), 2) };
            s.Markdown.Add($"GEMM M = {m}, [{n} x {k}]: float32 {F(gf(0))} GFLOP/s, int8 {F(gf(1))} ({F(med[0] / med[1], 2)}x), fp8 {F(gf(2))} ({F(med[0] / med[2], 2)}x).");
            foreach (var l in all) l.Dispose();
        }
        // The model: float32 (kernels), int8 and FP8 loaded side by side and measured in turns (batch-1 and batch-32
        // decode, 128-token prefill), so a busy moment of the shared machine hits all three alike; medians of the turns.
        {
            var names = new[] { "float32", "int8", "fp8" };
            var models = new[] { WeightQuantization.None, WeightQuantization.Int8, WeightQuantization.Fp8 }
                .Select(q => DeepseekV2Model.Load(c.ModelDir, new ModelLoadOptions { Quantization = q })).ToArray();
            var b1 = names.Select(_ => new List<double>()).ToArray();
            var b32 = names.Select(_ => new List<double>()).ToArray();
            var pre = names.Select(_ => new List<double>()).ToArray();
            var ratios = new List<double>[6];
            for (int i = 0; i < 6; i++) ratios[i] = new List<double>();
            int turns = c.Quick ? 5 : 9;
            for (int t = 0; t < turns; t++)
            {
                for (int i = 0; i < 3; i++) b1[i].Add(ModelCoreBench.Decode(models[i], 1, 32, 6).TokensPerSecond);
                for (int i = 0; i < 3; i++) b32[i].Add(ModelCoreBench.Decode(models[i], 32, 16, 2).TokensPerSecond);
                for (int i = 0; i < 3; i++) pre[i].Add(ModelCoreBench.Prefill(models[i], 128, 1).TokensPerSecond);
                for (int i = 1; i < 3; i++)
                {
                    ratios[i - 1].Add(b1[i][t] / b1[0][t]);
                    ratios[i + 1].Add(b32[i][t] / b32[0][t]);
                    ratios[i + 3].Add(pre[i][t] / pre[0][t]);
                }
                c.Log($"turn {t}: batch 1 {string.Join(" / ", b1.Select(l => l[t].ToString("F1")))}, batch 32 {string.Join(" / ", b32.Select(l => l[t].ToString("F1")))}, prefill {string.Join(" / ", pre.Select(l => l[t].ToString("F1")))} tok/s (float32 / int8 / fp8); load {File.ReadAllText("/proc/loadavg").Trim()}");
            }
            foreach (var m in models) m.Dispose();
            var r = ratios.Select(ModelCoreBench.Median).ToArray();
            c.Log($"model, medians of per-turn ratios to float32: batch 1 int8 {r[0]:F2}x fp8 {r[1]:F2}x; batch 32 int8 {r[2]:F2}x fp8 {r[3]:F2}x; prefill int8 {r[4]:F2}x fp8 {r[5]:F2}x");
            var modelRows = new List<string[]>();
            for (int i = 0; i < 3; i++)
                modelRows.Add([names[i], F(ModelCoreBench.Median(b1[i])), i == 0 ? "1" : F(r[i - 1], 2), F(ModelCoreBench.Median(b32[i])), i == 0 ? "1" : F(r[i + 1], 2), F(ModelCoreBench.Median(pre[i])), i == 0 ? "1" : F(r[i + 3], 2)]);
            s.Markdown.Add("");
            s.Table(["model weights", "batch 1 tok/s", "vs float32", "batch 32 tok/s", "vs float32", "prefill 128 tok/s", "vs float32"], modelRows);
            s.Data["model_ratios"] = new JsonObject
            {
                ["batch1_int8"] = Num(r[0], 3), ["batch1_fp8"] = Num(r[1], 3), ["batch32_int8"] = Num(r[2], 3), ["batch32_fp8"] = Num(r[3], 3),
                ["prefill_int8"] = Num(r[4], 3), ["prefill_fp8"] = Num(r[5], 3),
            };
            s.Summary.Add(("batch-1 decode int8 / fp8 vs float32 (kernels), in turns", $"{F(r[0], 2)}x / {F(r[1], 2)}x", "memory bandwidth"));
        }
        s.Data["shapes"] = json;
        s.Data["load_average"] = File.ReadAllText("/proc/loadavg").Trim();
        s.Table(["matrix", "shape", "M", "read probe GB/s", "float32 GB/s", "int8 GB/s", "fp8 GB/s", "int8 speedup", "fp8 speedup"], rows);
        return s;
    }
}
