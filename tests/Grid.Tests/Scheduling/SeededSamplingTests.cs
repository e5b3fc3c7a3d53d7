using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>The lite golden checkpoint loaded once in this process (model-core, no Orleans).</summary>
public sealed class LiteLocalExecutor : IAsyncLifetime
{
    public LocalStepExecutor Executor { get; private set; } = null!;
    public async Task InitializeAsync() =>
        Executor = await EngineFactory.LoadLocalAsync(Golden.Dir("lite_f32"), TorchSharp.torch.ScalarType.Float32, null, CancellationToken.None);
    public async Task DisposeAsync() => await Executor.DisposeAsync();
}

/// <summary>A seeded target request and the ways to run it, shared by the model-core and the grid tests.</summary>
public static class SeededRuns
{
    public static readonly GenerationRequest Target = new()
    {
        PromptIds = Golden.Load("lite_f32", "text").PromptIds,
        MaxTokens = 24,
        Sampling = new SamplingParams { Temperature = 0.9, TopP = 0.95, TopK = 50, Seed = 77, Logprobs = 2 },
        Choice = 1,
    };

    public static async Task<SampledToken[]> RunAsync(EngineLoop loop, GenerationRequest request)
    {
        var tokens = new List<SampledToken>();
        await foreach (var e in loop.Submit(request, CancellationToken.None).ReadAllAsync())
            if (e is TokenEvent t) tokens.Add(t.Token);
        return tokens.ToArray();
    }

    /// <summary>31 other requests (different prompts, lengths and seeds) around the target, all at once.</summary>
    public static async Task<SampledToken[]> InABatchOf32Async(EngineLoop loop)
    {
        var others = Enumerable.Range(0, 31).Select(i => RunAsync(loop, new GenerationRequest
        {
            PromptIds = Enumerable.Range(1 + i, 3 + i % 17).ToArray(),
            MaxTokens = 8 + i % 20,
            Sampling = new SamplingParams { Temperature = 1.0, Seed = 1000 + i },
        })).ToList();
        var target = RunAsync(loop, Target);
        await Task.WhenAll(others);
        return await target;
    }

    public static EngineLoop Loop(IStepExecutor executor, SchedulerOptions? options = null) =>
        new(executor, options ?? new SchedulerOptions(), NullLogger<EngineLoop>.Instance, 4096);

    public static void AssertSameTokens(SampledToken[] expected, SampledToken[] actual)
    {
        Assert.Equal(expected.Select(t => t.Token), actual.Select(t => t.Token));
        // Logprobs agree to float rounding (batch composition changes matmul blocking at the 1e-6 level).
        Assert.All(expected.Zip(actual), p => Assert.True(Math.Abs(p.First.Logprob - p.Second.Logprob) < 1e-4));
    }
}

/// <summary>
/// Seeded sampling is position-addressed and runs on the shard: a request draws the same tokens alone, in a batch
/// of 32, with its prompt split into other prefill chunks, and when its cache is rebuilt after a preemption.
/// </summary>
public sealed class SeededSamplingTests(LiteLocalExecutor lite) : IClassFixture<LiteLocalExecutor>
{
    static readonly GenerationRequest Target = SeededRuns.Target;
    static Task<SampledToken[]> RunAsync(EngineLoop loop, GenerationRequest request) => SeededRuns.RunAsync(loop, request);
    static EngineLoop Loop(IStepExecutor executor, SchedulerOptions? options = null) => SeededRuns.Loop(executor, options);
    static void AssertSameTokens(SampledToken[] expected, SampledToken[] actual) => SeededRuns.AssertSameTokens(expected, actual);

    [Fact]
    public async Task SameTokensAloneInABatchOf32AndWithOtherPrefillChunks()
    {
        SampledToken[] alone, batched, chunked;
        await using (var loop = Loop(lite.Executor)) alone = await RunAsync(loop, Target);
        Assert.Equal(24, alone.Length);
        Assert.True(alone.Select(t => t.Token).Distinct().Count() > 3, "a sampled, not a degenerate, sequence");

        await using (var loop = Loop(lite.Executor)) batched = await SeededRuns.InABatchOf32Async(loop);
        AssertSameTokens(alone, batched);

        // Prompt split into chunks of 2 tokens, 3 tokens per step.
        await using (var loop = Loop(lite.Executor, new SchedulerOptions { PrefillChunkTokens = 2, MaxBatchedTokens = 3 }))
        {
            chunked = await RunAsync(loop, Target);
            Assert.True(loop.RecentSteps().Length >= Target.PromptIds.Length / 2);
        }
        AssertSameTokens(alone, chunked);

        // Another seed or another choice draws other tokens (the test would pass trivially otherwise).
        await using (var loop = Loop(lite.Executor))
        {
            var otherChoice = await RunAsync(loop, Target with { Choice = 0 });
            var otherSeed = await RunAsync(loop, Target with { Sampling = Target.Sampling with { Seed = 78 } });
            Assert.NotEqual(alone.Select(t => t.Token), otherChoice.Select(t => t.Token));
            Assert.NotEqual(alone.Select(t => t.Token), otherSeed.Select(t => t.Token));
        }
    }

    [Fact]
    public async Task PreemptedAndRecomputedSequencesDrawTheSameTokens()
    {
        // A shard with room for 4 blocks of 16 tokens: 32 requests cannot all stay resident, so the planner preempts and
        // later recomputes (prefills prompt + generated tokens again); the target still draws what it drew alone.
        var config = lite.Executor.Config;
        using var thread = new Grid.ModelCore.Runtime.InferenceThread();
        var model = await thread.RunAsync(() => Grid.ModelCore.Model.DeepseekV2Model.Load(Golden.Dir("lite_f32"), new Grid.ModelCore.Model.ModelLoadOptions
        {
            CacheBlockSize = 16,
            CacheMaxBytes = 4L * 16 * config.LatentDim * config.NumHiddenLayers * sizeof(float),
        }));
        await using var small = new LocalStepExecutor(model, thread);
        Assert.Equal(4, (await small.GetBudgetsAsync(CancellationToken.None)).Single().TotalBlocks);
        SampledToken[] alone, crowded;
        await using (var loop = Loop(lite.Executor)) alone = await RunAsync(loop, Target);
        await using (var loop = Loop(small))
        {
            crowded = await SeededRuns.InABatchOf32Async(loop);
            Assert.True(loop.Preemptions > 0, "the small budget forces preemptions");
        }
        AssertSameTokens(alone, crowded);
        Assert.Equal(0, (await small.GetCacheStatsAsync(CancellationToken.None)).Tokens);
    }
}
