using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>
/// Penalties read the sequence's own tokens, which the shard commits with its latent cache: a penalised seeded
/// request draws the same tokens alone, in a batch of 32, with its prompt in 2-token chunks, and when it is preempted
/// and recomputed (its history rebuilt from the replayed tokens).
/// </summary>
public sealed class PenalisedSamplingTests(LiteLocalExecutor lite) : IClassFixture<LiteLocalExecutor>
{
    public static readonly GenerationRequest Target = SeededRuns.Target with
    {
        MaxTokens = 40,
        StopTokenIds = [407],
        Sampling = SeededRuns.Target.Sampling with
        {
            PresencePenalty = 0.5, FrequencyPenalty = 0.8, RepetitionPenalty = 1.2, MinP = 0.02, MinTokens = 30, StopTokenIds = [407],
            LogitBias = [new TokenBias(407, 6f), new TokenBias(12, 2.5f)],
        },
    };

    [Fact]
    public async Task SameTokensAloneBatchedChunkedAndAfterPreemption()
    {
        SampledToken[] alone, batched, chunked, crowded, plain;
        await using (var loop = SeededRuns.Loop(lite.Executor)) alone = await SeededRuns.RunAsync(loop, Target);
        // min_tokens 30 holds back the (biased) EOS: at least 30 tokens, none of them EOS before the 31st.
        Assert.InRange(alone.Length, 31, 40);
        Assert.DoesNotContain(407, alone.Take(30).Select(t => t.Token));

        await using (var loop = SeededRuns.Loop(lite.Executor)) plain = await SeededRuns.RunAsync(loop, SeededRuns.Target with { MaxTokens = 40 });
        Assert.NotEqual(plain.Select(t => t.Token), alone.Select(t => t.Token));

        await using (var loop = SeededRuns.Loop(lite.Executor))
        {
            var others = Enumerable.Range(0, 31).Select(i => SeededRuns.RunAsync(loop, new GenerationRequest
            {
                PromptIds = Enumerable.Range(1 + i, 3 + i % 17).ToArray(),
                MaxTokens = 8 + i % 20,
                Sampling = new SamplingParams { Temperature = 1.0, Seed = 1000 + i, FrequencyPenalty = i % 3 - 1, RepetitionPenalty = 1 + i % 4 * 0.1 },
            })).ToList();
            batched = await SeededRuns.RunAsync(loop, Target);
            await Task.WhenAll(others);
        }
        SeededRuns.AssertSameTokens(alone, batched);

        await using (var loop = SeededRuns.Loop(lite.Executor, new Grid.Configuration.SchedulerOptions { PrefillChunkTokens = 2, MaxBatchedTokens = 3 }))
            chunked = await SeededRuns.RunAsync(loop, Target);
        SeededRuns.AssertSameTokens(alone, chunked);

        // A 4-block cache: the 32 requests cannot all stay; preempted sequences prefill prompt + generated tokens again,
        // and the shard rebuilds their token history (the penalties' input) from that replay.
        var config = lite.Executor.Config;
        using var thread = new Grid.ModelCore.Runtime.InferenceThread();
        var model = await thread.RunAsync(() => Grid.ModelCore.Model.DeepseekV2Model.Load(Golden.Dir("lite_f32"), new Grid.ModelCore.Model.ModelLoadOptions
        {
            CacheBlockSize = 16,
            CacheMaxBytes = 4L * 16 * config.LatentDim * config.NumHiddenLayers * sizeof(float),
        }));
        await using var small = new LocalStepExecutor(model, thread);
        await using (var loop = SeededRuns.Loop(small))
        {
            var others = Enumerable.Range(0, 31).Select(i => SeededRuns.RunAsync(loop, new GenerationRequest
            {
                PromptIds = Enumerable.Range(1 + i, 3 + i % 17).ToArray(),
                MaxTokens = 8 + i % 20,
                Sampling = new SamplingParams { Temperature = 1.0, Seed = 1000 + i },
            })).ToList();
            crowded = await SeededRuns.RunAsync(loop, Target);
            await Task.WhenAll(others);
            Assert.True(loop.Preemptions > 0, "the small budget forces preemptions");
        }
        SeededRuns.AssertSameTokens(alone, crowded);
    }
}
