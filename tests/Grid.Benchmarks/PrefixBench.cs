using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;

namespace Grid.Benchmarks;

/// <summary>
/// Prefix caching: time to first token for requests that share a 2,000-token system prompt, and for the second turn of
/// a chat (whose prompt is the first turn's prompt, its answer and a new question), with the cache on and off; the
/// tokens reused; and how many tokens of prefix a host keeps per GiB with MLA against an MHA model of the same shape.
/// The mid model in process (model-core + the engine loop), one request at a time so TTFT is prefill alone.
/// </summary>
public static class PrefixBench
{
    const int SystemTokens = 2000;

    sealed record Ttft(double Ms, int CachedTokens);

    static async Task<Ttft> FirstTokenAsync(EngineLoop loop, int[] prompt, int maxTokens, List<int>? answer = null)
    {
        var sw = Stopwatch.StartNew();
        double first = double.NaN;
        int cached = 0;
        await foreach (var e in loop.Submit(new GenerationRequest { PromptIds = prompt, MaxTokens = maxTokens, Sampling = SamplingParams.Greedy }, CancellationToken.None).ReadAllAsync())
        {
            if (e is TokenEvent t)
            {
                if (double.IsNaN(first)) first = sw.Elapsed.TotalMilliseconds;
                answer?.Add(t.Token.Token);
            }
            else if (e is FinishedEvent f) cached = f.CachedTokens;
        }
        return new Ttft(first, cached);
    }

    static int[] Tokens(int seed, int count, int vocabulary)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => random.Next(3, vocabulary - 3)).ToArray();
    }

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("prefix", "Prefix caching: time to first token with a shared 2,000-token prompt and a two-turn chat, cache on vs off");
        var config = ModelConfig.Load(Path.Combine(c.ModelDir, "config.json"));
        int requests = c.Quick ? 4 : 8;
        var system = Tokens(1, SystemTokens, config.VocabSize);
        var results = new Dictionary<bool, (double SharedMs, double ColdMs, double Turn2Ms, int Reused, int Turn2Prompt, int Turn2Cached)>();
        foreach (var on in new[] { false, true })
        {
            ct.ThrowIfCancellationRequested();
            await using var executor = await EngineFactory.LoadLocalAsync(c.ModelDir, TorchSharp.torch.ScalarType.Float32, null, ct,
                new SiloOptions { PrefixCaching = on });
            await using var loop = new EngineLoop(executor, new SchedulerOptions { MaxBatchedTokens = 2048, PrefillChunkTokens = 2048 },
                NullLogger<EngineLoop>.Instance, 8192);
            // Shared system prompt: the first request computes it (cold), the others find it cached (cache on).
            var ttfts = new List<Ttft>();
            for (int r = 0; r < requests; r++)
                ttfts.Add(await FirstTokenAsync(loop, [.. system, .. Tokens(100 + r, 24, config.VocabSize)], 1));
            double cold = ttfts[0].Ms, shared = ttfts.Skip(1).Average(t => t.Ms);
            int reused = ttfts.Sum(t => t.CachedTokens);
            // Two-turn chat: turn 2 = turn 1's prompt + its answer + a new question.
            var turn1 = system.Concat(Tokens(7, 64, config.VocabSize)).ToArray();
            var answer = new List<int>();
            await FirstTokenAsync(loop, turn1, 32, answer);
            int[] turn2 = [.. turn1, .. answer, .. Tokens(8, 48, config.VocabSize)];
            var second = await FirstTokenAsync(loop, turn2, 1);
            results[on] = (shared, cold, second.Ms, reused + second.CachedTokens, turn2.Length, second.CachedTokens);
            c.Log($"prefix: cache {(on ? "on" : "off")}: cold TTFT {cold:F0} ms, shared-prompt TTFT {shared:F0} ms, turn-2 TTFT {second.Ms:F0} ms " +
                  $"({second.CachedTokens} of {turn2.Length} prompt tokens cached), tokens reused {reused + second.CachedTokens}");
        }
        var off = results[false];
        var cached = results[true];
        double sharedRatio = off.SharedMs / cached.SharedMs, turnRatio = off.Turn2Ms / cached.Turn2Ms;
        s.Table(["", "cache off", "cache on", "off / on"],
        [
            ["TTFT, first request (computes the 2,000-token prompt)", $"{off.ColdMs:F0} ms", $"{cached.ColdMs:F0} ms", Report.F(off.ColdMs / cached.ColdMs, 2) + "x"],
            [$"TTFT, requests 2..{requests} sharing the 2,000-token prompt (mean)", $"{off.SharedMs:F0} ms", $"{cached.SharedMs:F0} ms", Report.F(sharedRatio, 1) + "x"],
            [$"TTFT, chat turn 2 ({cached.Turn2Prompt} prompt tokens, {cached.Turn2Cached} cached)", $"{off.Turn2Ms:F0} ms", $"{cached.Turn2Ms:F0} ms", Report.F(turnRatio, 1) + "x"],
            ["prompt tokens reused (all requests)", off.Reused.ToString(), cached.Reused.ToString(), ""],
        ]);
        s.Summary.Add(("prefix cache: TTFT with a shared 2,000-token prompt, off / on", Report.F(sharedRatio, 1) + "x", "the uncached suffix's prefill and one decode"));
        s.Summary.Add(("prefix cache: TTFT of a chat's second turn, off / on", Report.F(turnRatio, 1) + "x", "only the new turn is prefilled"));
        s.Data["requests"] = requests;
        s.Data["system_tokens"] = SystemTokens;
        foreach (var (on, r) in results)
            s.Data[on ? "on" : "off"] = new JsonObject
            {
                ["cold_ttft_ms"] = Report.Num(r.ColdMs), ["shared_ttft_ms"] = Report.Num(r.SharedMs), ["turn2_ttft_ms"] = Report.Num(r.Turn2Ms),
                ["tokens_reused"] = r.Reused, ["turn2_prompt_tokens"] = r.Turn2Prompt, ["turn2_cached_tokens"] = r.Turn2Cached,
            };
        s.Data["shared_ratio"] = Report.Num(sharedRatio);
        s.Data["turn2_ratio"] = Report.Num(turnRatio);

        // Prefix per GiB: MLA caches (kv_lora_rank + qk_rope_head_dim) values per token and layer; an MHA model of the
        // same shape caches keys (heads x (qk_nope + qk_rope)) and values (heads x v_head_dim).
        var shapes = new List<(string Name, int Layers, int Heads, int KvLora, int Rope, int Nope, int V)>
        {
            ($"benchmark model ({config.NumHiddenLayers} layers, {config.NumAttentionHeads} heads)", config.NumHiddenLayers, config.NumAttentionHeads,
                config.KvLoraRank, config.QkRopeHeadDim, config.QkNopeHeadDim, config.VHeadDim),
            ("DeepSeek-V2-Lite (27 layers, 16 heads)", 27, 16, 512, 64, 128, 128),
            ("DeepSeek-V2 (60 layers, 128 heads)", 60, 128, 512, 64, 128, 128),
        };
        var perGiB = new JsonArray();
        var rows = new List<string[]>();
        foreach (var (name, layers, heads, kvLora, rope, nope, v) in shapes)
        {
            long mla = (long)(kvLora + rope) * layers * 2, mha = (long)heads * (nope + rope + v) * layers * 2;   // bf16 bytes per token
            double gib = 1L << 30;
            rows.Add([name, $"{mla:N0} B", $"{gib / mla:N0}", $"{mha:N0} B", $"{gib / mha:N0}", Report.F((double)mha / mla, 1) + "x"]);
            perGiB.Add(new JsonObject { ["model"] = name, ["mla_bytes_per_token"] = mla, ["mha_bytes_per_token"] = mha, ["mla_tokens_per_gib"] = (long)(gib / mla), ["mha_tokens_per_gib"] = (long)(gib / mha) });
        }
        s.Data["tokens_per_gib_bf16"] = perGiB;
        s.Table(["model (bf16 cache)", "MLA per token", "MLA tokens / GiB", "MHA per token", "MHA tokens / GiB", "MLA keeps"], rows);
        s.Notes.Add($"One request at a time on the mid model in this process (float32, blocks of 16, MaxBatchedTokens = PrefillChunkTokens = 2048 so a prompt is one chunk); TTFT = submit to first token. Cache on: a request computes only the tokens after its longest cached full-block prefix (at least its last token).");
        return s;
    }
}
