using System.Diagnostics;
using System.Text.Json.Nodes;
using Grid.ModelCore.Config;
using Grid.Tests.Faults;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Recovery: a silo is killed (SIGKILL) under load, N streams running, on a real multi-process cluster (the fault
/// tests' ProcessCluster: Redis, silo and gateway processes). Two scenarios: an attention silo (its latent caches are
/// lost; the gateway re-prefills the sequences on the surviving shard) and the expert silo serving groups 1-3 with an
/// elastic silo present (the groups move there). Reported per scenario: the pause clients saw (each stream's longest
/// gap between consecutive tokens, p50 and max, against the same figure without a fault), and the tokens lost
/// (tokens that did not arrive identical to the unfaulted run: expected 0), streams failed.
/// </summary>
public static class RecoveryBench
{
    sealed record Scenario(string Name, string Victim, int AttentionShards, Action<ProcessCluster> StartSilos, string[] Silos);

    public static async Task<Section> RunAsync(BenchContext c, CancellationToken ct)
    {
        var s = new Section("recovery", "Recovery: a silo killed under load");
        var config = ModelConfig.Load(Path.Combine(c.ModelDir, "config.json"));
        int groups = config.NRoutedExperts % 4 == 0 ? 4 : throw new InvalidOperationException($"n_routed_experts {config.NRoutedExperts} is not a multiple of 4");
        int streams = c.Quick ? 8 : 16, maxTokens = c.Quick ? 48 : 160, killAfter = c.Quick ? 8 : 20;
        Scenario[] scenarios =
        [
            new("attention silo", "attention1", 2, cl =>
            {
                cl.StartSilo("attention0", attention: true, groups: [], metrics: true);
                cl.StartSilo("attention1", attention: true, groups: [], metrics: true);
                cl.StartSilo("experts", attention: false, groups: Enumerable.Range(0, groups).ToArray());
            }, ["attention0", "attention1", "experts"]),
            new("expert silo, elastic silo present", "experts", 1, cl =>
            {
                cl.StartSilo("attention", attention: true, groups: [0]);
                cl.StartSilo("experts", attention: false, groups: Enumerable.Range(1, groups - 1).ToArray());
                cl.StartSilo("elastic", attention: false, groups: [], elastic: true);
            }, ["attention", "experts", "elastic"]),
        ];
        var results = new JsonArray();
        var rows = new List<string[]>();
        foreach (var sc in scenarios)
        {
            ct.ThrowIfCancellationRequested();
            c.Log($"recovery: {sc.Name}: {streams} streams of {maxTokens} tokens, kill -9 {sc.Victim} once each has {killAfter}");
            var entry = new JsonObject { ["scenario"] = sc.Name, ["killed"] = sc.Victim, ["streams"] = streams, ["max_tokens"] = maxTokens, ["killed_after_tokens"] = killAfter };
            try
            {
                await RunScenarioAsync(c, sc, groups, streams, maxTokens, killAfter, entry);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                c.Log($"recovery: {sc.Name} failed: {e.Message.Split('\n')[0]}");
                entry["error"] = e.GetType().Name + ": " + e.Message.Split('\n')[0];
            }
            results.Add(entry);
            rows.Add([sc.Name, streams.ToString(), Cell(entry, "unfaulted_gap_ms_p50"), Cell(entry, "unfaulted_gap_ms_max"), Cell(entry, "pause_ms_p50"),
                Cell(entry, "pause_ms_max"), Cell(entry, "all_done_after_kill_s"), Cell(entry, "tokens_lost"), Cell(entry, "streams_failed"), entry["error"]?.ToString() ?? ""]);
        }
        s.Data["results"] = results;
        s.Table(["silo killed", "streams", "no-fault longest gap p50 ms", "no-fault longest gap max ms", "pause p50 ms", "pause max ms", "all ended s after kill", "tokens lost", "streams failed", "error"], rows);
        s.Notes.Add($"Real processes on loopback ({c.BuildConfig} builds): redis-server, one grid-silo per part (1 torch thread each, OMP_WAIT_POLICY=PASSIVE), grid serve; " +
                    $"{groups} expert groups. Streams: streamed /v1/completions, token-id prompts, half greedy and half seeded (temperature 1), ignore_eos, logprobs 0 with token ids.");
        s.Notes.Add("Pause = per stream, the longest gap between two consecutive tokens (p50 and max over the streams that completed; n/a when none did); the no-fault figure is the same streams run once without a kill. " +
                    "Tokens lost = per stream, max_tokens minus the tokens that arrived identical to the unfaulted run before the first difference or the end (0 when every stream reproduced it). " +
                    "The unfaulted run equals the solo runs of its first two requests (checked).");
        s.Notes.Add("Detection time dominates the pause: the gateway must learn the silo is gone (a refused connection, membership, or a call deadline) before it re-places the work.");
        foreach (JsonObject r in results.Cast<JsonObject>())
            s.Summary.Add(($"recovery, {r["scenario"]} killed under {streams} streams: pause p50/max, tokens lost",
                r["error"] is { } err ? $"failed: {err}" : $"{r["pause_ms_p50"]}/{r["pause_ms_max"]} ms (no fault {r["unfaulted_gap_ms_p50"]}/{r["unfaulted_gap_ms_max"]} ms), {r["tokens_lost"]} tokens lost, {r["streams_failed"]} streams failed",
                "failure detection, then re-placement and (attention) re-prefill of every lost sequence's prompt + generated tokens"));
        return s;
    }

    static string Cell(JsonObject o, string key) => o[key]?.ToString() ?? "";

    static async Task RunScenarioAsync(BenchContext c, Scenario sc, int groups, int streams, int maxTokens, int killAfter, JsonObject entry)
    {
        await using var cluster = new ProcessCluster(c.ModelDir, groups, log: m => c.Log("recovery: " + m));
        var clock = Stopwatch.StartNew();
        await cluster.StartRedisAsync();
        sc.StartSilos(cluster);
        await Task.WhenAll(sc.Silos.Select(cluster.WaitSiloReadyAsync));
        var gateway = await cluster.StartGatewayAsync("gateway", sc.AttentionShards);
        entry["cluster_start_s"] = Num(clock.Elapsed.TotalSeconds, 1);

        var prompts = StreamClient.DistinctPrompts(streams, 16);
        var specs = prompts.Select((p, i) => i % 2 == 0 ? new CompletionSpec(p, maxTokens) : new CompletionSpec(p, maxTokens, 1.0, 9_000 + i)).ToArray();
        // References: the unfaulted concurrent run, anchored on solo runs of its first two requests.
        var solo = await StreamClient.SoloAsync(gateway.Http, specs.Take(2));
        var reference = await Task.WhenAll(StreamClient.StartAll(gateway.Http, specs).Select(x => x.Completion));
        if (reference.FirstOrDefault(r => !r.Complete) is { } bad) throw new InvalidOperationException("unfaulted run failed: " + bad.Describe());
        if (StreamClient.Mismatches(solo, reference.Take(2).ToArray()) is { Count: > 0 } differ)
            throw new InvalidOperationException("the unfaulted concurrent run differs from the solo runs: " + differ[0]);
        var unfaultedGaps = reference.Select(r => r.LongestGapMs).ToArray();

        var running = StreamClient.StartAll(gateway.Http, specs);
        await StreamClient.WaitAllTokensAsync(running, killAfter, ProcessCluster.StartLimit);
        if (sc.AttentionShards > 1)
        {
            // The victim should hold sequences; if both shards landed on the other attention silo, kill that one.
            var held = await cluster.SiloMetricAsync(sc.Victim, "grid_silo_sequences");
            entry["victim_sequences"] = held;
            if (held is 0) sc = sc with { Victim = "attention0" };
        }
        var killedAt = Stopwatch.StartNew();
        await cluster.Kill9Async(sc.Victim);
        entry["killed"] = sc.Victim;
        var runs = await Task.WhenAll(running.Select(x => x.Completion));
        entry["all_done_after_kill_s"] = Num(killedAt.Elapsed.TotalSeconds, 1);

        // A stream that never resumed has no pause to measure: pauses are over the streams that completed.
        var pauses = runs.Where(r => r.Complete).Select(r => r.LongestGapMs).ToArray();
        int lost = 0, failed = 0;
        for (int i = 0; i < runs.Length; i++)
        {
            int same = 0;
            while (same < runs[i].Tokens.Length && same < reference[i].Tokens.Length && runs[i].Tokens[same] == reference[i].Tokens[same]) same++;
            lost += maxTokens - same;
            if (!runs[i].Complete) failed++;
        }
        entry["unfaulted_gap_ms_p50"] = Num(StreamClient.Percentile(unfaultedGaps, 50), 0);
        entry["unfaulted_gap_ms_max"] = Num(unfaultedGaps.Max(), 0);
        entry["pause_ms_p50"] = Num(StreamClient.Percentile(pauses, 50), 0);
        entry["pause_ms_max"] = Num(pauses.DefaultIfEmpty(double.NaN).Max(), 0);
        entry["tokens_lost"] = lost;
        entry["streams_failed"] = failed;
        entry["failures"] = new JsonArray(runs.Where(r => !r.Complete).Take(3).Select(r => (JsonNode)r.Describe()).ToArray());
        c.Log($"recovery: {sc.Name}: pause p50 {entry["pause_ms_p50"]} ms, max {entry["pause_ms_max"]} ms; {lost} tokens lost; {failed} of {runs.Length} streams failed");
    }
}
