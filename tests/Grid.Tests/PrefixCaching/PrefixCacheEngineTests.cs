using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;
using Xunit.Abstractions;

namespace Grid.Tests.PrefixCaching;

/// <summary>The golden checkpoints loaded in this process with prefix caching on and off (block size 4, so short prompts hit too).</summary>
public sealed class PrefixCacheExecutors : IAsyncLifetime
{
    public const int BlockSize = 4;
    readonly Dictionary<(string, bool), LocalStepExecutor> _executors = new();
    public LocalStepExecutor Get(string checkpoint, bool prefixCaching) => _executors[(checkpoint, prefixCaching)];
    /// <summary>lite_f32 with prefix caching and a budget of <see cref="TinyBlocks"/> blocks.</summary>
    public LocalStepExecutor Tiny { get; private set; } = null!;
    public const int TinyBlocks = 64;

    public async Task InitializeAsync()
    {
        foreach (var checkpoint in Golden.Checkpoints)
            foreach (var on in new[] { true, false })
                _executors[(checkpoint, on)] = await EngineFactory.LoadLocalAsync(Golden.Dir(checkpoint), TorchSharp.torch.ScalarType.Float32, null,
                    CancellationToken.None, new SiloOptions { CacheBlockSize = BlockSize, PrefixCaching = on });
        var config = ModelConfig.Load(Path.Combine(Golden.Dir("lite_f32"), "config.json"));
        long bytesPerBlock = (long)BlockSize * config.LatentDim * config.NumHiddenLayers * sizeof(float);
        Tiny = await EngineFactory.LoadLocalAsync(Golden.Dir("lite_f32"), TorchSharp.torch.ScalarType.Float32, null, CancellationToken.None,
            new SiloOptions { CacheBlockSize = BlockSize, PrefixCaching = true, CacheMaxBytes = TinyBlocks * bytesPerBlock });
    }

    public async Task DisposeAsync()
    {
        foreach (var e in _executors.Values) await e.DisposeAsync();
        await Tiny.DisposeAsync();
    }
}

/// <summary>
/// Prefix caching through the engine loop and model-core (the real model, no mocks): outputs with the cache are those
/// without it, token for token and logprob for logprob, while the shared prefix is computed once.
/// </summary>
public sealed class PrefixCacheEngineTests(PrefixCacheExecutors executors, ITestOutputHelper output) : IClassFixture<PrefixCacheExecutors>
{
    static EngineLoop Loop(IStepExecutor executor) => new(executor, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, 4096);

    sealed record Run(SampledToken[] Tokens, FinishedEvent Finished);

    static async Task<Run> RunAsync(EngineLoop loop, GenerationRequest request)
    {
        var tokens = new List<SampledToken>();
        FinishedEvent? finished = null;
        await foreach (var e in loop.Submit(request, CancellationToken.None).ReadAllAsync())
            if (e is TokenEvent t) tokens.Add(t.Token);
            else if (e is FinishedEvent f) finished = f;
        return new Run(tokens.ToArray(), finished ?? throw new InvalidOperationException("no finish event"));
    }

    static GenerationRequest Greedy(int[] prompt, int maxTokens = 16) => new()
    {
        PromptIds = prompt,
        MaxTokens = maxTokens,
        Sampling = SamplingParams.Greedy with { Logprobs = 5 },
    };

    /// <summary>Tokens identical; logprobs and top-5 alternatives equal to float rounding (the cached rows were computed in a longer chunk).</summary>
    double AssertSame(Run expected, Run actual, string context)
    {
        Assert.Equal(expected.Tokens.Select(t => t.Token), actual.Tokens.Select(t => t.Token));
        double worst = 0;
        foreach (var (e, a) in expected.Tokens.Zip(actual.Tokens))
        {
            worst = Math.Max(worst, Math.Abs(e.Logprob - a.Logprob));
            Assert.Equal(e.Top.Select(x => x.Id), a.Top.Select(x => x.Id));
            foreach (var (x, y) in e.Top.Zip(a.Top)) worst = Math.Max(worst, Math.Abs(x.Logprob - y.Logprob));
        }
        output.WriteLine($"{context}: largest logprob difference {worst:E2}");
        Assert.True(worst < 1e-4, $"{context}: logprobs differ by {worst}");
        return worst;
    }

    [Theory]
    [MemberData(nameof(Golden.Cases), MemberType = typeof(Golden))]
    public async Task GoldenOutputsAreIdenticalWithAndWithoutPrefixCaching(string checkpoint, string prompt)
    {
        var expected = Golden.Load(checkpoint, prompt);
        var request = Greedy(expected.PromptIds);
        await using var off = Loop(executors.Get(checkpoint, false));
        await using var on = Loop(executors.Get(checkpoint, true));
        var uncached = await RunAsync(off, request);
        Assert.Equal(expected.GeneratedIds, uncached.Tokens.Select(t => t.Token));
        Assert.Equal(0, uncached.Finished.CachedTokens);

        var first = await RunAsync(on, request);     // computes the prompt (or hits what an earlier case left)
        var second = await RunAsync(on, request);    // the prompt's full blocks are cached now
        int reusable = (expected.PromptIds.Length - 1) / PrefixCacheExecutors.BlockSize * PrefixCacheExecutors.BlockSize;
        Assert.Equal(reusable, second.Finished.CachedTokens);
        Assert.True(second.Finished.CachedTokens > 0);
        Assert.Equal(expected.GeneratedIds, second.Tokens.Select(t => t.Token));
        AssertSame(uncached, first, $"{checkpoint}/{prompt} first");
        AssertSame(uncached, second, $"{checkpoint}/{prompt} cached");
        // The golden top-5 logprobs hold through the cache as they do without it.
        var top5 = expected.StepTop5;
        for (int step = 0; step < top5.Length; step++)
            foreach (var (id, logprob) in top5[step])
                Assert.True(Math.Abs(second.Tokens[step].Top.First(t => t.Id == id).Logprob - logprob) < 1e-3, $"step {step} id {id}");
        Assert.True(on.PrefixHits >= second.Finished.CachedTokens);
        Assert.True(on.PrefixQueries >= 2 * expected.PromptIds.Length);
    }

    /// <summary>The long golden prompt as a shared "system prompt", with a different question after it per request.</summary>
    static int[] Shared(int question) => [.. Golden.Load("lite_f32", "long").PromptIds, 7 + question, 30 + question, 11, 5 + question, 9];

    async Task<(Run[] Runs, int PeakBlocks)> ConcurrentAsync(LocalStepExecutor executor)
    {
        await using var loop = Loop(executor);
        var cache = executor.Model.Cache!;
        await RunAsync(loop, Greedy(Shared(0), 2));    // the first request computes the shared prompt
        cache.ResetPeak();                             // the loop is idle: nothing runs on the inference thread
        loop.Pause();
        var runs = Enumerable.Range(1, 3).Select(q => RunAsync(loop, Greedy(Shared(q), 8))).ToArray();
        await Poll.UntilAsync(() => Task.FromResult(loop.WaitingCount), n => n == 3, TimeSpan.FromMinutes(1));
        loop.Resume();                                 // all three are admitted together and run side by side
        var done = await Task.WhenAll(runs);
        return (done, cache.PeakBlocksInUse);
    }

    [Fact]
    public async Task ConcurrentRequestsSharingALongPrefixShareItsBlocksAndMatchTheUncachedOutputs()
    {
        var (cached, cachedPeak) = await ConcurrentAsync(executors.Get("lite_f32", true));
        var (uncached, uncachedPeak) = await ConcurrentAsync(executors.Get("lite_f32", false));
        output.WriteLine($"peak blocks held: {cachedPeak} with prefix caching, {uncachedPeak} without");
        for (int i = 0; i < 3; i++)
        {
            AssertSame(uncached[i], cached[i], $"request {i + 1}");
            Assert.Equal(200, cached[i].Finished.CachedTokens);   // 200 prompt tokens = 50 full blocks, all cached
            Assert.Equal(0, uncached[i].Finished.CachedTokens);
        }
        // Three sequences of ~213 tokens: ~54 blocks each without sharing; with it the 50 prompt blocks are held once.
        Assert.True(uncachedPeak >= 3 * 53, $"uncached peak {uncachedPeak}");
        Assert.True(cachedPeak <= 50 + 3 * 5, $"cached peak {cachedPeak}");
    }

    [Fact]
    public async Task PenaltiesReadTheSharedPrefixAsTheSequencesOwnHistory()
    {
        var request = new GenerationRequest
        {
            PromptIds = Shared(4),
            MaxTokens = 12,
            Sampling = new SamplingParams { Temperature = 0.8, Seed = 5, Logprobs = 2, PresencePenalty = 0.7, FrequencyPenalty = 0.4, RepetitionPenalty = 1.3 },
        };
        await using var off = Loop(executors.Get("full_f32", false));
        await using var on = Loop(executors.Get("full_f32", true));
        var uncached = await RunAsync(off, request);
        await RunAsync(on, request with { MaxTokens = 1 });
        var cached = await RunAsync(on, request);
        Assert.True(cached.Finished.CachedTokens >= 200);
        AssertSame(uncached, cached, "penalised");
    }

    [Fact]
    public async Task UnderATinyBudgetCachedPrefixesAreEvictedAndOutputsStayRight()
    {
        // 64 blocks of 4 tokens: one ~213-token sequence (54 blocks) fits, a second prompt's cache cannot stay beside it.
        await using var tiny = Loop(executors.Tiny);
        await using var off = Loop(executors.Get("lite_f32", false));
        int[] other = [.. Golden.Load("lite_f32", "long").PromptIds.Reverse(), 3, 4, 5];
        var cache = executors.Tiny.Model.Cache!;
        long evictionsBefore = cache.Evictions;
        foreach (var prompt in new[] { Shared(1), other, Shared(2), other, Shared(1) })
        {
            var expected = await RunAsync(off, Greedy(prompt, 6));
            var actual = await RunAsync(tiny, Greedy(prompt, 6));
            AssertSame(expected, actual, $"prompt of {prompt.Length}");
        }
        Assert.True(cache.Evictions > evictionsBefore, "nothing was evicted");
        Assert.True(cache.CapacityBlocks <= PrefixCacheExecutors.TinyBlocks);
        Assert.True(tiny.PrefixHits == 0 || tiny.PrefixHits % PrefixCacheExecutors.BlockSize == 0);
    }
}
