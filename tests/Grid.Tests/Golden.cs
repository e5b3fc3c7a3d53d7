using System.Text.Json.Nodes;

namespace Grid.Tests;

/// <summary>The golden checkpoints in ../shared/golden and their expected outputs.</summary>
public static class Golden
{
    public static readonly string[] Checkpoints = ["lite_f32", "full_f32"];
    public static readonly string[] Prompts = ["ids", "text", "chat", "long"];

    public static string Root { get; } = FindRoot();

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "golden");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("shared/golden not found above " + AppContext.BaseDirectory);
    }

    public static string Dir(string checkpoint) => Path.Combine(Root, checkpoint);

    public static Expected Load(string checkpoint, string prompt) =>
        new(JsonNode.Parse(File.ReadAllText(Path.Combine(Dir(checkpoint), $"expected.{prompt}.json")))!.AsObject());

    public static IEnumerable<object[]> Cases() =>
        from c in Checkpoints from p in Prompts select new object[] { c, p };
}

public sealed class Expected(JsonObject json)
{
    public JsonObject Json { get; } = json;
    public int[] PromptIds => Json["prompt_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
    public int[] GeneratedIds => Json["generated_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
    public double[] LastLogits => Json["last_logits"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();

    /// <summary>Per generated step: top-5 (id, logprob).</summary>
    public (int Id, double Logprob)[][] StepTop5 => Json["steps"]!.AsArray()
        .Select(s => s!["top5"]!.AsArray().Select(t => (t!["id"]!.GetValue<int>(), t["logprob"]!.GetValue<double>())).ToArray())
        .ToArray();

    /// <summary>Per MoE layer: layer index and, per prompt position, the chosen experts (descending weight) and weights.</summary>
    public IEnumerable<(int Layer, int[][] Experts, double[][] Weights)> Routing => Json["routing"]!.AsArray().Select(r => (
        r!["layer"]!.GetValue<int>(),
        r["experts"]!.AsArray().Select(e => e!.AsArray().Select(x => x!.GetValue<int>()).ToArray()).ToArray(),
        r["weights"]!.AsArray().Select(e => e!.AsArray().Select(x => x!.GetValue<double>()).ToArray()).ToArray()));

    /// <summary>
    /// Checks a legacy-completions <c>logprobs</c> object rendered with <c>return_tokens_as_token_ids</c>: the
    /// greedy tokens are the golden ones, every step has 5 alternatives, and the golden top-5 logprobs (and the
    /// chosen token's) agree within 1e-3.
    /// </summary>
    public void AssertLegacyLogprobs(JsonNode logprobs, string context = "")
    {
        var tokens = logprobs["tokens"]!.AsArray().Select(Http.Json.TokenId).ToArray();
        Xunit.Assert.Equal(GeneratedIds, tokens);
        var top5 = StepTop5;
        for (int step = 0; step < GeneratedIds.Length; step++)
        {
            var top = logprobs["top_logprobs"]![step]!.AsObject();
            Xunit.Assert.Equal(5, top.Count);
            foreach (var (id, logprob) in top5[step])
                Xunit.Assert.True(Math.Abs(top[$"token_id:{id}"]!.GetValue<double>() - logprob) < 1e-3, $"{context} step {step} id {id}");
            Xunit.Assert.True(Math.Abs(logprobs["token_logprobs"]![step]!.GetValue<double>() - top5[step][0].Logprob) < 1e-3, $"{context} step {step}");
        }
    }

    public double SoftmaxScale => Json["softmax_scale"]!.GetValue<double>();
    public double RopeCosSinScale => Json["rope_cos_sin_scale"]!.GetValue<double>();
}
