using System.Globalization;
using System.Text.Json.Nodes;

namespace Grid.Benchmarks;

/// <summary>
/// Issue 12's and 13's goals, each as the ratio this run measured, read from the sections' figures: whether the goal is
/// met is decided here, by the same run, never by a number quoted from elsewhere. A goal whose section did not run is
/// left out.
/// </summary>
public static class Goals
{
    public sealed record Row(string Goal, string Measured, string Target, bool? Met);

    public static List<Row> Evaluate(IReadOnlyDictionary<string, JsonObject> sections)
    {
        var rows = new List<Row>();
        void AtLeast(string goal, double? value, double target, string unit = "×", string? detail = null)
        {
            if (value is not double v || double.IsNaN(v)) return;
            string Fmt(double x) => unit == "%" ? (x * 100).ToString(x >= 0.995 ? "F0" : "F1", CultureInfo.InvariantCulture) + "%" : x.ToString("F2", CultureInfo.InvariantCulture) + unit;
            rows.Add(new Row(goal, Fmt(v) + (detail is null ? "" : $" ({detail})"), "≥ " + Fmt(target), v >= target));
        }
        void AtMost(string goal, double? value, double target, string detail)
        {
            if (value is not double v || double.IsNaN(v)) return;
            rows.Add(new Row(goal, v.ToString("E2", CultureInfo.InvariantCulture) + $" ({detail})", "≤ " + target.ToString("E0", CultureInfo.InvariantCulture), v <= target));
        }
        static double? D(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
        static double? Div(double? a, double? b) => a is double x && b is double y && y > 0 ? x / y : null;

        if (sections.TryGetValue("llamacpp", out var l))
        {
            AtLeast("batch-1 decode, Grid / llama.cpp (F32, same checkpoint)", Div(D(l["grid"]?["decode_tokens_per_second"]), D(l["llama_cpp"]?["decode_tokens_per_second"])), 1.0,
                detail: $"{D(l["grid"]?["decode_tokens_per_second"]):F1} vs {D(l["llama_cpp"]?["decode_tokens_per_second"]):F1} tok/s");
            AtLeast($"prefill ({l["prompt_tokens"]} tokens), Grid / llama.cpp", Div(D(l["grid"]?["prefill_tokens_per_second"]), D(l["llama_cpp"]?["prefill_tokens_per_second"])), 1.0,
                detail: $"{D(l["grid"]?["prefill_tokens_per_second"]):F0} vs {D(l["llama_cpp"]?["prefill_tokens_per_second"]):F0} tok/s");
            var weightBytes = D(l["activated_weight_bytes_per_token"]);
            var gbs = D(l["grid"]?["decode_tokens_per_second"]) * weightBytes / 1e9;
            if (gbs is double g && D(l["memory_read_gbps"]) is double bw)
                rows.Add(new Row("batch-1 decode weight bytes/s, of the run's memory read bandwidth (the ceiling)",
                    $"{g / bw * 100:F0}% ({g:F1} of {bw:F1} GB/s)", "report", null));
        }
        if (sections.TryGetValue("kernel", out var k))
        {
            AtLeast($"prefill ({k["prefill"]?["tokens"]} tokens) FLOP/s, of the run's matmul ceiling", D(k["prefill"]?["fraction_of_matmul"]), 0.70, "%");
            if (k["decode"] is JsonArray decode && decode.Count > 1)
            {
                var first = decode[0]!; var last = decode[^1]!;
                var paired = PairedRatios(last["tokens_per_second_rounds"], first["tokens_per_second_rounds"]);
                AtLeast($"batch-{last["batch"]} aggregate decode / batch-{first["batch"]} decode (model-core)",
                    paired is { } p ? ModelCoreBench.Median(p) : Div(D(last["tokens_per_second"]), D(first["tokens_per_second"])), 5.0,
                    detail: $"{D(last["tokens_per_second"]):F1} vs {D(first["tokens_per_second"]):F1} tok/s" + Range(paired));
            }
        }
        if (sections.TryGetValue("grid", out var gr) && gr["results"] is JsonArray results && results.Count > 0)
        {
            var b1 = results[0]!; var bN = results[^1]!;
            AtLeast("embedded grid / model-core, batch 1", D(b1["embedded"]?["ratio_to_model_core"]), 0.95);
            AtLeast("3-silo loopback cluster / model-core, batch 1", D(b1["cluster"]?["ratio_to_model_core"]), 0.60);
            AtLeast($"3-silo loopback cluster / model-core, batch {bN["batch"]}", D(bN["cluster"]?["ratio_to_model_core"]), 1.50);
        }
        if (sections.TryGetValue("quant", out var q))
        {
            double? Rate(string weights, string key) => q["decode"] is JsonArray a
                ? a.Where(r => r?["weights"]?.GetValue<string>() == weights).Select(r => D(r![key])).FirstOrDefault() : null;
            JsonNode? Rounds(string weights) => q["decode"] is JsonArray a
                ? a.FirstOrDefault(r => r?["weights"]?.GetValue<string>() == weights)?["batch1_tokens_per_second_rounds"] : null;
            foreach (var option in new[] { "int8 weights", "fp8 weights" })
            {
                var paired = PairedRatios(Rounds(option), Rounds("float32 + kernels"));
                AtLeast($"batch-1 decode, {option} / float32 (kernels, the default)",
                    paired is { } p ? ModelCoreBench.Median(p) : Div(Rate(option, "batch1_tokens_per_second"), Rate("float32 + kernels", "batch1_tokens_per_second")), 2.0,
                    detail: $"{Rate(option, "batch1_tokens_per_second"):F1} vs {Rate("float32 + kernels", "batch1_tokens_per_second"):F1} tok/s" + Range(paired));
            }
            if (q["accuracy"] is JsonArray acc)
                foreach (var r in acc)
                {
                    var name = r?["option"]?.GetValue<string>() ?? "";
                    bool cache = name.Contains("cache", StringComparison.Ordinal);
                    AtMost($"benchmark model, {name}: mean KL vs float32 (nats/token)", D(r!["mean_kl_nats"]), cache ? 1e-3 : 2e-3, $"{r["positions"]} positions");
                    if (!cache) AtLeast($"benchmark model, {name}: top-1 agreement with float32", D(r["top1_agreement"]), 0.98, "%");
                }
        }
        return rows;
    }

    /// <summary>a[r] / b[r] for each round r where both were measured in the same round (null without rounds).</summary>
    static double[]? PairedRatios(JsonNode? a, JsonNode? b)
    {
        if (a is not JsonArray x || b is not JsonArray y || x.Count != y.Count || x.Count == 0) return null;
        return x.Zip(y, (u, v) => u!.GetValue<double>() / v!.GetValue<double>()).ToArray();
    }

    /// <summary>", median of N rounds, a-b": the spread of the per-round ratios a goal's median came from.</summary>
    static string Range(double[]? ratios) => ratios is null ? "" :
        string.Create(CultureInfo.InvariantCulture, $"; median of {ratios.Length} same-round ratios, range {ratios.Min():F2}-{ratios.Max():F2}");
}
