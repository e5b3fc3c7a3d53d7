using Grid.ModelCore.Model;
using Grid.Trainer;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests.Trained;

/// <summary>
/// Grid serves exactly the model tests/Grid.Trainer trained: the fixture carries lite_f32's config and tokenizer
/// byte for byte, model-core's logits equal the trainer's own forward (an independent autograd implementation of the
/// paper's model) on the trained and the random golden weights, kernels on and off, and model-core's held-out loss is
/// the one the trainer recorded.
/// </summary>
public class TrainedCheckpointTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Theory]
    [InlineData("config.json")]
    [InlineData("tokenizer.json")]
    public void TheFixtureHasLiteF32sConfigAndTokenizer(string file) =>
        Assert.Equal(File.ReadAllBytes(Path.Combine(Golden.Dir("lite_f32"), file)), File.ReadAllBytes(Path.Combine(TrainedFixture.Dir, file)));

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GridReproducesTheTrainersHeldOutLoss(bool useKernels)
    {
        using var model = DeepseekV2Model.Load(TrainedFixture.Dir, new ModelLoadOptions { UseKernels = useKernels });
        double loss = TrainedFixture.Loss(model, TrainedFixture.HeldOut);
        output.WriteLine($"kernels {(useKernels ? "on" : "off")}: held-out loss {loss:F6} nats/token, trainer {TrainedFixture.TrainerHeldOutLoss:F6} over {TrainedFixture.HeldOut.Count} windows");
        Assert.True(Math.Abs(loss - TrainedFixture.TrainerHeldOutLoss) < 1e-4, $"model-core {loss:F6} vs trainer {TrainedFixture.TrainerHeldOutLoss:F6}");
    }

    [Theory]
    [InlineData("trained", true)]
    [InlineData("trained", false)]
    [InlineData("lite_f32", true)]
    public void TrainerForwardAndModelCoreGiveTheSameLogitsAndExperts(string checkpoint, bool useKernels)
    {
        var dir = checkpoint == "trained" ? TrainedFixture.Dir : Golden.Dir(checkpoint);
        var windows = TrainedFixture.Spread(4);
        using var noGrad = no_grad();
        using var trainer = DeepseekV2Lm.Load(dir, maxPositions: windows.Max(w => w.Length));
        using var model = DeepseekV2Model.Load(dir, new ModelLoadOptions { UseKernels = useKernels });
        double worst = 0, scale = 0;
        int tokens = 0, expertMismatches = 0;
        foreach (var w in windows)
        {
            using var scope = NewDisposeScope();
            var ids = tensor(w.Select(t => (long)t).ToArray()).unsqueeze(0);
            var reference = trainer.Forward(ids);
            var seq = model.Cache!.Create();
            using var grid = model.Forward([new SequenceChunk(seq, w, AllLogits: true)], keepRouting: true);
            model.Cache.Release(seq);
            worst = Math.Max(worst, (grid.Logits - reference.Logits[0]).abs().max().item<float>());
            scale = Math.Max(scale, reference.Logits.abs().max().item<float>());
            var moeLayers = model.Config.MoeLayers.ToList();
            for (int m = 0; m < moeLayers.Count; m++)
            {
                var chosen = reference.GateScores[m].topk(model.Config.NumExpertsPerTok, dim: -1).indexes.to(ScalarType.Int32).data<int>().ToArray();
                var routing = grid.Routing![moeLayers[m]];
                expertMismatches += chosen.Where((e, i) => e != routing.ExpertIds[i]).Count();
            }
            tokens += w.Length;
        }
        output.WriteLine($"{checkpoint}, kernels {(useKernels ? "on" : "off")}: max |logit diff| {worst:E2} (logits up to {scale:F2}) over {tokens} positions; {expertMismatches} expert choices differ");
        Assert.True(worst < 1e-3 * Math.Max(1, scale), $"max logit difference {worst:E2}");
        Assert.Equal(0, expertMismatches);
    }
}
