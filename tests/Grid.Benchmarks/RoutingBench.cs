using System.Text.Json.Nodes;
using Grid.ModelCore.Model;
using static Grid.Benchmarks.Report;
using static TorchSharp.torch;

namespace Grid.Benchmarks;

/// <summary>
/// Routing: how many expert groups each token reaches with exact top-K routing and with device-limited routing
/// (at most M of G groups), the load imbalance across groups, and what the limit changes in the logits.
/// </summary>
public static class RoutingBench
{
    public sealed record Stats(double MeanFanOut, double[] ShareByGroups, double MeanImbalance, double MaxImbalance);

    /// <summary>Groups reached per token and max/mean of token-expert assignments per group, over all MoE layers.</summary>
    public static Stats Measure(IReadOnlyDictionary<int, Routing> routings, int experts, int groups)
    {
        int groupSize = experts / groups;
        var reached = new long[groups + 1];
        long tokens = 0, fanOut = 0;
        var imbalance = new List<double>();
        foreach (var r in routings.Values)
        {
            var load = new long[groups];
            for (int t = 0; t < r.Tokens; t++)
            {
                var mine = new HashSet<int>();
                for (int k = 0; k < r.TopK; k++)
                {
                    int g = r.Expert(t, k) / groupSize;
                    mine.Add(g);
                    load[g]++;
                }
                reached[mine.Count]++;
                fanOut += mine.Count;
                tokens++;
            }
            imbalance.Add(load.Max() / load.Average());
        }
        return new Stats((double)fanOut / tokens, reached.Select(n => (double)n / tokens).ToArray(), imbalance.Average(), imbalance.Max());
    }

    public static Section Run(BenchContext c)
    {
        var s = new Section("routing", "Routing: expert-group fan-out and device-limited routing");
        var model = c.Model;
        var config = model.Config;
        const int groups = 8;
        int tokens = c.Quick ? 256 : 512;
        var prompt = ModelCoreBench.Prompt(config, tokens, salt: 99);
        int[] limits = [0, 4, 2, 1];   // 0 = exact routing
        Tensor? exact = null;
        var results = new JsonArray();
        var rows = new List<string[]>();
        try
        {
            foreach (var m in limits)
            {
                c.Log($"routing {tokens} tokens, {(m == 0 ? "exact" : $"M = {m} of {groups} groups")}");
                var seq = model.Cache!.Create();
                try
                {
                    using var output = model.Forward([new SequenceChunk(seq, prompt, AllLogits: true)],
                        limit: m == 0 ? null : new DeviceLimit(groups, m), keepRouting: true);
                    var st = Measure(output.Routing!, config.NRoutedExperts, groups);
                    var entry = new JsonObject
                    {
                        ["max_groups"] = m == 0 ? null : m,
                        ["mean_fan_out"] = Num(st.MeanFanOut, 3),
                        ["token_share_by_groups_reached"] = new JsonArray(st.ShareByGroups.Select(x => Num(x)).ToArray()),
                        ["group_load_imbalance_mean"] = Num(st.MeanImbalance, 3),
                        ["group_load_imbalance_max"] = Num(st.MaxImbalance, 3),
                    };
                    string logitChange = "—", top1 = "—";
                    if (exact is null) exact = output.Logits.clone();
                    else
                    {
                        using var scope = NewDisposeScope();
                        double meanAbs = (output.Logits - exact).abs().mean().item<float>();
                        double scale = exact.abs().mean().item<float>();
                        double agree = output.Logits.argmax(-1).eq(exact.argmax(-1)).to(ScalarType.Float32).mean().item<float>();
                        entry["logit_mean_abs_change"] = Num(meanAbs, 5);
                        entry["logit_mean_abs_change_relative"] = Num(meanAbs / scale, 5);
                        entry["top1_agreement"] = Num(agree);
                        logitChange = $"{F(meanAbs, 4)} ({Pct(meanAbs / scale)})";
                        top1 = Pct(agree);
                    }
                    results.Add(entry);
                    var dist = string.Join(" / ", Enumerable.Range(1, Math.Min(groups, config.NumExpertsPerTok)).Select(n => Pct(st.ShareByGroups[n])));
                    rows.Add([m == 0 ? "exact" : $"M = {m}", F(st.MeanFanOut, 2), dist, F(st.MeanImbalance, 2), F(st.MaxImbalance, 2), logitChange, top1]);
                    c.Log($"{(m == 0 ? "exact" : $"M = {m}")}: fan-out {st.MeanFanOut:F2}, imbalance {st.MeanImbalance:F2} (max {st.MaxImbalance:F2})");
                }
                finally
                {
                    model.Cache!.Release(seq);
                }
            }
        }
        finally
        {
            exact?.Dispose();
        }
        s.Data["groups"] = groups;
        s.Data["tokens"] = tokens;
        s.Data["results"] = results;
        s.Table(["routing", "mean groups/token", $"tokens reaching 1 / 2 / … / {Math.Min(groups, config.NumExpertsPerTok)} groups", "group load max/mean (mean over layers)",
            "worst layer", "logit |Δ| vs exact (relative)", "top-1 agreement"], rows);
        s.Notes.Add($"{tokens} prompt tokens through all {config.NumHiddenLayers - config.FirstKDenseReplace} MoE layers, {config.NRoutedExperts} experts in {groups} contiguous groups of {config.NRoutedExperts / groups}, top-{config.NumExpertsPerTok}. Load = token-expert assignments per group.");
        s.Notes.Add("Weights are random, so affinities are nearly uniform: fan-out and imbalance here show the mechanism, not what a trained checkpoint does.");
        var exactRow = (JsonObject)results[0]!;
        var m2 = (JsonObject)results[2]!;
        s.Summary.Add(($"expert groups per token, exact / M = 2 (of {groups})", $"{exactRow["mean_fan_out"]} / {m2["mean_fan_out"]}", "router affinities (random weights here); M caps it"));
        s.Summary.Add(("group load imbalance max/mean, exact / M = 2", $"{exactRow["group_load_imbalance_mean"]} / {m2["group_load_imbalance_mean"]}",
            $"{tokens} tokens × {config.NumExpertsPerTok} assignments over {groups} groups (sampling noise); no balancing at inference"));
        return s;
    }
}
