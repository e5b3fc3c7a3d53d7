using Grid.ModelCore.Model;
using Grid.ModelCore.Weights;
using Xunit;
using static Grid.Tests.ModelTestKit;
using static TorchSharp.torch;

namespace Grid.Tests;

public class ModelCoreTests
{
    static readonly int[] Prompt = Golden.Load("full_f32", "long").PromptIds[..40];

    [Theory]
    [InlineData("lite_f32")]
    [InlineData("full_f32")]
    public void AbsorbedAndNaiveAttentionAgree(string checkpoint)
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir(checkpoint));
        var naive = Greedy(model, Prompt, 6, AttentionMode.Naive);
        var absorbed = Greedy(model, Prompt, 6, AttentionMode.Absorbed);
        for (int i = 0; i < naive.Count; i++)
            Assert.True(MaxAbsDiff(naive[i], absorbed[i]) < 1e-4, $"step {i}: {MaxAbsDiff(naive[i], absorbed[i])}");
        // The two forms really are different computations, not one path twice.
        Assert.NotEqual(naive[0], absorbed[0]);
    }

    [Theory]
    [InlineData("lite_f32")]
    [InlineData("full_f32")]
    public void PrefillThenDecodeEqualsFullSequenceForward(string checkpoint)
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir(checkpoint));
        var cache = model.Cache!;
        // Full forward over the whole sequence, logits at every position.
        var full = cache.Create();
        using var all = model.Forward([new SequenceChunk(full, Prompt, AllLogits: true)]);
        // Prefill the first 25 in two chunks (17 + 8), then decode the rest one token at a time.
        var inc = cache.Create();
        using (model.Forward([new SequenceChunk(inc, Prompt[..17])])) { }
        using (var o = model.Forward([new SequenceChunk(inc, Prompt[17..25])]))
            Assert.True(MaxAbsDiff(Row(o.Logits, 0), Row(all.Logits, 24)) < 1e-4);
        for (int p = 25; p < Prompt.Length; p++)
        {
            using var o = model.Forward([new SequenceChunk(inc, [Prompt[p]])]);
            var diff = MaxAbsDiff(Row(o.Logits, 0), Row(all.Logits, p));
            Assert.True(diff < 1e-4, $"position {p}: {diff}");
        }
        Assert.Equal(Prompt.Length, inc.Length);
    }

    [Fact]
    public void BatchedDecodeOfDifferentLengthsEqualsEachAlone()
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        int[] lengths = [3, 17, 40, 9, 33];
        var alone = lengths.Select(n => Greedy(model, Prompt[..n], 5)).ToList();
        var cache = model.Cache!;
        var seqs = lengths.Select(_ => cache.Create()).ToArray();
        // Prefill all together (mixed lengths in one step), then decode all together.
        var next = new int[lengths.Length];
        using (var o = model.Forward(lengths.Select((n, i) => new SequenceChunk(seqs[i], Prompt[..n])).ToList()))
            for (int i = 0; i < lengths.Length; i++)
            {
                Assert.True(MaxAbsDiff(Row(o.Logits, i), alone[i][0]) < 1e-4);
                next[i] = Grid.ModelCore.Sampling.Sampler.Argmax(Row(o.Logits, i));
            }
        for (int step = 1; step < 5; step++)
        {
            using var o = model.Forward(lengths.Select((_, i) => new SequenceChunk(seqs[i], [next[i]])).ToList());
            for (int i = 0; i < lengths.Length; i++)
            {
                var row = Row(o.Logits, i);
                Assert.True(MaxAbsDiff(row, alone[i][step]) < 1e-4, $"seq {i} step {step}: {MaxAbsDiff(row, alone[i][step])}");
                next[i] = Grid.ModelCore.Sampling.Sampler.Argmax(row);
            }
        }
    }

    [Theory]
    [InlineData(StorageDtype.BF16)]
    [InlineData(StorageDtype.F16)]
    public void ShardAndDtypeVariantsGiveTheSameOutputs(StorageDtype dtype)
    {
        using var _ = no_grad();
        Func<float, float> round = dtype == StorageDtype.BF16 ? RoundBf16 : RoundF16;
        // The same (rounded) values stored as 16-bit in one file and as float32 in 3 shards.
        var half = Rewrite(Golden.Dir("full_f32"), "half", dtype, shards: 1, round);
        var sharded = Rewrite(Golden.Dir("full_f32"), "sharded", StorageDtype.F32, shards: 3, round);
        Assert.True(File.Exists(Path.Combine(sharded, "model.safetensors.index.json")));
        Assert.Equal(3, Directory.GetFiles(sharded, "model-*-of-00003.safetensors").Length);
        using var a = DeepseekV2Model.Load(half);
        using var b = DeepseekV2Model.Load(sharded);
        var la = Greedy(a, Prompt, 4);
        var lb = Greedy(b, Prompt, 4);
        for (int i = 0; i < la.Count; i++) Assert.Equal(0.0, MaxAbsDiff(la[i], lb[i]));
        // And rounding the weights moved the output a little but not the greedy tokens.
        using var original = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        var lo = Greedy(original, Prompt, 4);
        Assert.Equal(lo.Select(l => Grid.ModelCore.Sampling.Sampler.Argmax(l)), la.Select(l => Grid.ModelCore.Sampling.Sampler.Argmax(l)));
        Assert.True(MaxAbsDiff(lo[0], la[0]) > 0);
    }

    [Fact]
    public void SingleFileCopyOfShardedCheckpointIsIdentical()
    {
        using var _ = no_grad();
        var single = Rewrite(Golden.Dir("full_f32"), "single", StorageDtype.F32, shards: 1);
        using var a = DeepseekV2Model.Load(single);
        using var b = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        Assert.Equal(0.0, MaxAbsDiff(Greedy(a, Prompt, 2)[1], Greedy(b, Prompt, 2)[1]));
    }

    [Fact]
    public void Bf16ComputeStaysCloseToFloat32()
    {
        using var _ = no_grad();
        using var f32 = DeepseekV2Model.Load(Golden.Dir("lite_f32"));
        using var bf16 = DeepseekV2Model.Load(Golden.Dir("lite_f32"), new ModelLoadOptions { Dtype = ScalarType.BFloat16 });
        var a = Greedy(f32, Prompt[..12], 1)[0];
        var b = Greedy(bf16, Prompt[..12], 1)[0];
        var diff = MaxAbsDiff(a, b);
        Assert.True(diff > 0 && diff < 0.5, $"bf16 vs f32 logits differ by {diff}");
    }
}
