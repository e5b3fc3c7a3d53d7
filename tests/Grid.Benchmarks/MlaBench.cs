using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>MLA: latent cache bytes per token against the multi-head-attention equivalent, and absorbed vs naive decode time by context.</summary>
public static class MlaBench
{
    public sealed record CacheShape(string Name, int Layers, int Heads, int KvLoraRank, int Rope, int Nope, int V, int BytesPerElement = 2)
    {
        /// <summary>c_KV plus the shared RoPE key, per layer.</summary>
        public long LatentBytes => (long)(KvLoraRank + Rope) * Layers * BytesPerElement;
        /// <summary>Full keys (nope + rope per head) and values (v per head), per layer.</summary>
        public long MhaBytes => (long)Heads * (Nope + Rope + V) * Layers * BytesPerElement;

        public static CacheShape Of(string name, ModelConfig c, int bytes) =>
            new(name, c.NumHiddenLayers, c.NumAttentionHeads, c.KvLoraRank, c.QkRopeHeadDim, c.QkNopeHeadDim, c.VHeadDim, bytes);
    }

    public static Section Run(BenchContext c)
    {
        var s = new Section("mla", "MLA: latent cache and absorbed attention");
        var model = c.Model;
        var shapes = new[]
        {
            CacheShape.Of("mid (float32, this run)", model.Config, 4),
            new CacheShape("DeepSeek-V2 (bf16)", 60, 128, 512, 64, 128, 128),
            new CacheShape("DeepSeek-V2-Lite (bf16)", 27, 16, 512, 64, 128, 128),
        };
        long measured = model.Cache!.BytesPerToken;
        if (measured != shapes[0].LatentBytes)
            throw new InvalidOperationException($"LatentCache.BytesPerToken {measured} differs from the formula {shapes[0].LatentBytes}");
        s.Data["cache_bytes_per_token"] = new JsonArray(shapes.Select(x => (JsonNode)new JsonObject
        {
            ["config"] = x.Name,
            ["latent"] = x.LatentBytes,
            ["mha"] = x.MhaBytes,
            ["mha_over_latent"] = Num((double)x.MhaBytes / x.LatentBytes, 2),
        }).ToArray());
        s.Data["measured_latent_bytes_per_token"] = measured;
        s.Table(["config", "latent bytes/token", "MHA bytes/token", "MHA / latent"],
            shapes.Select(x => (IReadOnlyList<string>)[x.Name, x.LatentBytes.ToString("N0"), x.MhaBytes.ToString("N0"), F((double)x.MhaBytes / x.LatentBytes)]));
        s.Notes.Add($"Latent = (kv_lora_rank + qk_rope_head_dim) × layers × bytes; MHA = heads × (qk_nope + qk_rope + v_head_dim) × layers × bytes. The mid row is checked against LatentCache.BytesPerToken ({measured:N0}).");

        int[] contexts = c.Quick ? [128, 1024] : [128, 1024, 4096];
        int steps = c.Quick ? 4 : 16;
        var results = new JsonArray();
        var rows = new List<string[]>();
        foreach (var ctx in contexts)
        {
            c.Log($"MLA decode at context {ctx}: prefill");
            var (seqs, next) = ModelCoreBench.StartSequences(model, 1, ctx);
            try
            {
                c.Log($"MLA decode at context {ctx}: naive vs absorbed, {steps} steps each");
                var naive = ModelCoreBench.TimeDecode(model, seqs, next, steps, AttentionMode.Naive);
                var absorbed = ModelCoreBench.TimeDecode(model, seqs, next, steps, AttentionMode.Absorbed);
                double na = naive.SplitMs[StepProfile.Attention], ab = absorbed.SplitMs[StepProfile.Attention];
                c.Log($"context {ctx}: step naive {naive.StepMs:F0} ms (attention {na:F1}), absorbed {absorbed.StepMs:F0} ms (attention {ab:F1})");
                results.Add(new JsonObject
                {
                    ["context"] = ctx,
                    ["steps"] = steps,
                    ["naive_step_ms"] = Num(naive.StepMs, 2),
                    ["absorbed_step_ms"] = Num(absorbed.StepMs, 2),
                    ["naive_attention_ms"] = Num(na, 2),
                    ["absorbed_attention_ms"] = Num(ab, 2),
                    ["step_speedup"] = Num(naive.StepMs / absorbed.StepMs, 3),
                    ["attention_speedup"] = Num(na / ab, 3),
                });
                rows.Add([ctx.ToString(), F(naive.StepMs), F(absorbed.StepMs), F(naive.StepMs / absorbed.StepMs, 2) + "×", F(na), F(ab), F(na / ab, 2) + "×"]);
            }
            finally
            {
                foreach (var q in seqs) model.Cache.Release(q);
            }
        }
        s.Data["decode"] = results;
        s.Table(["context", "naive ms/step", "absorbed ms/step", "step speedup", "naive attention ms", "absorbed attention ms", "attention speedup"], rows);
        s.Notes.Add($"Batch 1, {steps} greedy steps after one warm-up at each context; the prompt is prefilled once (chunks of 512) and both forms decode from the same cache.");
        if (c.Quick) s.Notes.Add("Quick run: contexts 128 and 1K only (prefilling 4K tokens takes ~30 s on 2 cores); the full run adds 4K.");

        s.Summary.Add(("MLA latent cache bytes/token vs MHA (mid / V2 / V2-Lite)",
            string.Join(" / ", shapes.Select(x => $"{F((double)x.MhaBytes / x.LatentBytes)}× smaller")), "formula; exact"));
        var lastRun = (JsonObject)results[^1]!;
        s.Summary.Add(($"absorbed vs naive decode step at context {lastRun["context"]}", $"{lastRun["step_speedup"]}× (attention alone {lastRun["attention_speedup"]}×)",
            "naive re-expands the whole latent cache into per-head K/V every step (grows with context); absorbed reads the latent once per head but pays two extra per-head matmuls"));
        return s;
    }
}
