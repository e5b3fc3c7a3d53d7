using System.Text.Json.Nodes;
using Grid.ModelCore.Model;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests.Trained;

/// <summary>
/// tests/fixtures/trained_lite: a DeepSeek-V2 model with lite_f32's config and tokenizer trained by tests/Grid.Trainer,
/// its held-out windows and the held-out loss the trainer measured (heldout.json).
/// </summary>
public static class TrainedFixture
{
    public static string Dir { get; } = Find();

    static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "fixtures", "trained_lite");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("tests/fixtures/trained_lite not found above " + AppContext.BaseDirectory);
    }

    static readonly Lazy<JsonObject> HeldOutJson = new(() => JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, "heldout.json")))!.AsObject());

    /// <summary>The held-out windows (BOS + 127 tokens each) the trainer evaluated.</summary>
    public static IReadOnlyList<int[]> HeldOut => HeldOutJson.Value["sequences"]!.AsArray()
        .Select(s => s!.AsArray().Select(t => t!.GetValue<int>()).ToArray()).ToList();

    /// <summary>The trainer's mean next-token loss over <see cref="HeldOut"/>, nats/token.</summary>
    public static double TrainerHeldOutLoss => HeldOutJson.Value["loss"]!.GetValue<double>();

    /// <summary><paramref name="count"/> held-out windows spread evenly over the files' held-out parts.</summary>
    public static List<int[]> Spread(int count)
    {
        var all = HeldOut;
        return Enumerable.Range(0, count).Select(i => all[i * all.Count / count]).ToList();
    }

    /// <summary>Every position's logits [S, V] of one window, prefilled as one chunk.</summary>
    public static Tensor Logits(DeepseekV2Model model, int[] window)
    {
        var seq = model.Cache!.Create();
        try
        {
            using var o = model.Forward([new SequenceChunk(seq, window, AllLogits: true)]);
            return o.Logits.clone();
        }
        finally
        {
            model.Cache.Release(seq);
        }
    }

    /// <summary>Mean next-token cross-entropy over windows, teacher-forced (the trainer's definition), nats/token.</summary>
    public static double Loss(DeepseekV2Model model, IReadOnlyList<int[]> windows)
    {
        using var noGrad = no_grad();
        double sum = 0;
        long count = 0;
        foreach (var w in windows)
        {
            using var scope = NewDisposeScope();
            var logprobs = log_softmax(Logits(model, w).narrow(0, 0, w.Length - 1).to(ScalarType.Float64), -1);
            var next = tensor(w[1..].Select(t => (long)t).ToArray()).unsqueeze(1);
            sum -= logprobs.gather(1, next).sum().item<double>();
            count += w.Length - 1;
        }
        return sum / count;
    }
}
