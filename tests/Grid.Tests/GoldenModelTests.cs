using Grid.ModelCore.Model;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests;

public class GoldenModelTests
{
    [Theory]
    [MemberData(nameof(Golden.Cases), MemberType = typeof(Golden))]
    public void ModelCoreMatchesGolden(string checkpoint, string prompt)
    {
        var expected = Golden.Load(checkpoint, prompt);
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir(checkpoint));
        Assert.Equal(expected.SoftmaxScale, model.Rope.SoftmaxScale, 12);
        Assert.Equal(expected.RopeCosSinScale, model.Rope.CosSinScale, 12);
        var seq = model.Cache!.Create();
        var prompt_ = expected.PromptIds;
        using (var output = model.Forward([new SequenceChunk(seq, prompt_)], keepRouting: true))
        {
            var logits = output.Logits[0].data<float>().ToArray();
            var want = expected.LastLogits;
            double maxDiff = want.Select((w, i) => Math.Abs(w - logits[i])).Max();
            Assert.True(maxDiff < 1e-3, $"last logits differ by {maxDiff}");
            foreach (var (layer, experts, weights) in expected.Routing)
            {
                var r = output.Routing![layer];
                for (int t = 0; t < experts.Length; t++)
                    for (int k = 0; k < experts[t].Length; k++)
                    {
                        Assert.Equal(experts[t][k], r.Expert(t, k));
                        Assert.True(Math.Abs(weights[t][k] - r.Weight(t, k)) < 1e-4, $"layer {layer} token {t} weight {k}");
                    }
            }
            var generated = new List<int>();
            var top5 = expected.StepTop5;
            var next = Argmax(logits);
            CheckTop5(logits, top5[0], 0);
            generated.Add(next);
            for (int step = 1; step < expected.GeneratedIds.Length; step++)
            {
                using var o = model.Forward([new SequenceChunk(seq, [next])]);
                var l = o.Logits[0].data<float>().ToArray();
                CheckTop5(l, top5[step], step);
                next = Argmax(l);
                generated.Add(next);
            }
            Assert.Equal(expected.GeneratedIds, generated.ToArray());
        }
    }

    static int Argmax(float[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    static void CheckTop5(float[] logits, (int Id, double Logprob)[] top5, int step)
    {
        double max = logits.Max();
        double lse = max + Math.Log(logits.Sum(l => Math.Exp(l - max)));
        foreach (var (id, lp) in top5)
        {
            double got = logits[id] - lse;
            Assert.True(Math.Abs(got - lp) < 1e-3, $"step {step} token {id}: logprob {got} vs {lp}");
        }
    }
}
