using Grid.ModelCore.Model;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests;

/// <summary>Device-limited routing (the paper's M): each token reaches at most M expert groups.</summary>
public class DeviceLimitedRoutingTests
{
    [Theory]
    [InlineData("lite_f32", 4, 1)]
    [InlineData("full_f32", 4, 1)]
    [InlineData("full_f32", 8, 2)]
    public void TokensReachAtMostMGroupsAndLogitsMoveLittle(string checkpoint, int groups, int maxGroups)
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir(checkpoint));
        var prompt = Golden.Load(checkpoint, "long").PromptIds;
        var limit = new DeviceLimit(groups, maxGroups);
        var exact = model.Forward([new SequenceChunk(model.Cache!.Create(), prompt, AllLogits: true)], keepRouting: true);
        var limited = model.Forward([new SequenceChunk(model.Cache!.Create(), prompt, AllLogits: true)], limit: limit, keepRouting: true);
        int groupSize = model.Config.NRoutedExperts / groups;
        int exceeding = 0, tokens = 0;
        foreach (var (layer, routing) in limited.Routing!)
            for (int t = 0; t < routing.Tokens; t++)
            {
                var reached = Enumerable.Range(0, routing.TopK).Select(k => routing.Expert(t, k) / groupSize).Distinct().Count();
                Assert.InRange(reached, 1, maxGroups);
                var exactReached = Enumerable.Range(0, routing.TopK).Select(k => exact.Routing![layer].Expert(t, k) / groupSize).Distinct().Count();
                if (exactReached > maxGroups) exceeding++;
                tokens++;
            }
        // The limit really changed some routing decisions and therefore the logits, but only by a little.
        Assert.True(exceeding > 0, "exact routing never exceeded the limit: the test would prove nothing");
        double maxDiff = 0;
        for (int r = 0; r < prompt.Length; r++)
            maxDiff = Math.Max(maxDiff, ModelTestKit.MaxAbsDiff(ModelTestKit.Row(exact.Logits, r), ModelTestKit.Row(limited.Logits, r)));
        Assert.True(maxDiff > 1e-4, $"logits did not move ({maxDiff})");
        exact.Dispose();
        limited.Dispose();
    }

    [Fact]
    public void ALimitAtOrAboveTheGroupCountChangesNothing()
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("lite_f32"));
        var prompt = Golden.Load("lite_f32", "text").PromptIds;
        using var exact = model.Forward([new SequenceChunk(model.Cache!.Create(), prompt)]);
        using var limited = model.Forward([new SequenceChunk(model.Cache!.Create(), prompt)], limit: new DeviceLimit(4, 4));
        Assert.Equal(0.0, ModelTestKit.MaxAbsDiff(ModelTestKit.Row(exact.Logits, 0), ModelTestKit.Row(limited.Logits, 0)));
    }
}
