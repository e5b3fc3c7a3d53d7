using Grid.Configuration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>
/// Recovery in the engine loop, over the fake shard: a lost silo (caches gone, step interrupted), refusals, errors
/// that must not block the loop. The fake samples a pure function of (tokens, seed, choice, index), so a recomputed
/// sequence must produce exactly the tokens of an undisturbed run.
/// </summary>
public sealed class EngineRecoveryTests
{
    static EngineLoop Loop(IStepExecutor executor, TimeSpan? recovery = null) =>
        new(executor, new SchedulerOptions { PrefillChunkTokens = 5, MaxBatchedTokens = 64 }, NullLogger<EngineLoop>.Instance,
            contextLength: 1 << 20, firstSequenceId: 1, recovery: recovery);

    static GenerationRequest Request(int[] prompt, int maxTokens, long seed) => new()
    {
        PromptIds = prompt,
        MaxTokens = maxTokens,
        Sampling = new SamplingParams { Temperature = 1, Seed = seed },
    };

    static int[] Expected(GenerationRequest r)
    {
        var tokens = r.PromptIds.ToList();
        for (int i = 0; i < r.MaxTokens; i++) tokens.Add(FakeExecutor.NextToken(tokens, new DrawKey(r.Sampling.Seed!.Value, r.Choice, i)));
        return tokens.Skip(r.PromptIds.Length).ToArray();
    }

    static async Task<(int[] Tokens, GenerationEvent Last)> DrainAsync(System.Threading.Channels.ChannelReader<GenerationEvent> reader)
    {
        var events = new List<GenerationEvent>();
        await foreach (var e in reader.ReadAllAsync()) events.Add(e);
        return (events.OfType<TokenEvent>().Select(t => t.Token.Token).ToArray(), events[^1]);
    }

    [Fact]
    public async Task SequencesWhoseCachesWereLostAreRecomputedAndFinishWithTheSameTokens()
    {
        var executor = new FakeExecutor(4, 1000);
        executor.Gate();
        await using var loop = Loop(executor);
        var requests = Enumerable.Range(0, 6).Select(i => Request([3 + i, 4, 5, 6, 7, 8, 9], 20, seed: 40 + i)).ToArray();
        var runs = requests.Select(r => DrainAsync(loop.Submit(r, CancellationToken.None))).ToArray();
        executor.AllowSteps(8);                                       // prefills done, a few tokens each
        await Poll.UntilAsync(() => Task.FromResult(executor.Steps.Count >= 8), "the first steps did not run");
        executor.LoseCaches();                                        // the attention silo dies
        executor.Ungate();
        var done = await Task.WhenAll(runs);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(Expected(requests[i]), done[i].Tokens);
            Assert.Equal(new FinishedEvent("length", 7, 20), done[i].Last);
        }
        Assert.Equal(1, loop.Interruptions);
        Assert.Equal(requests.Length, loop.Recomputed);               // each lost cache was rebuilt once
        // The recomputes prefilled prompt + generated from position 0 under new cache ids.
        var restarts = executor.Steps.Skip(8).SelectMany(s => s).Where(c => c.Position == 0).ToList();
        Assert.Equal(requests.Length, restarts.Count);
        Assert.All(restarts, c => Assert.True(c.SequenceId > requests.Length, "a recomputed sequence gets a new cache id"));
    }

    [Fact]
    public async Task ASequenceItsShardKeepsRefusingFailsAloneAndTheLoopServesOn()
    {
        // Refused in every step it is in, the sequence is recomputed up to the limit and then fails with an error; the
        // sequences stepped beside it (stepped again after each refusal) finish with their tokens, and the loop serves
        // a request submitted afterwards.
        var executor = new FakeExecutor(4, 1000) { AlwaysRefuse = c => c.Position == 0 && c.Tokens[0] == 999 };
        await using var loop = Loop(executor);
        var healthy = Enumerable.Range(0, 3).Select(i => Request([3 + i, 4, 5, 6], 12, seed: 60 + i)).ToArray();
        var runs = healthy.Select(r => DrainAsync(loop.Submit(r, CancellationToken.None))).ToArray();
        var poisoned = DrainAsync(loop.Submit(Request([999, 4, 5], 12, seed: 1), CancellationToken.None));
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => poisoned.WaitAsync(Poll.Deadline));
        Assert.Contains("was refused by its shard 9 times in a row", failure.Message);
        var done = await Task.WhenAll(runs).WaitAsync(Poll.Deadline);   // a loop that died never finishes them
        for (int i = 0; i < healthy.Length; i++)
        {
            Assert.Equal(Expected(healthy[i]), done[i].Tokens);
            Assert.Equal(new FinishedEvent("length", 4, 12), done[i].Last);
        }
        var after = Request([7, 8, 9], 5, seed: 3);
        Assert.Equal(Expected(after), (await DrainAsync(loop.Submit(after, CancellationToken.None))).Tokens);
        Assert.Equal(8, loop.Recomputed);
    }

    [Fact]
    public async Task AReleaseThatNeverAnswersDoesNotHoldUpTheLoop()
    {
        var executor = new FakeExecutor(4, 1000) { HoldReleases = new() };
        await using var loop = Loop(executor);
        // Each request finishes and its release hangs; the next ones still run to the end.
        for (int i = 0; i < 3; i++)
        {
            var r = Request([10 + i, 11, 12], 5, seed: i);
            var (tokens, last) = await DrainAsync(loop.Submit(r, CancellationToken.None));
            Assert.Equal(Expected(r), tokens);
            Assert.Equal(new FinishedEvent("length", 3, 5), last);
        }
        Assert.Empty(executor.ReleasedIds);
        executor.HoldReleases.SetResult();
        await Poll.UntilAsync(() => Task.FromResult(executor.ReleasedIds.Length == 3), "the held releases did not complete");
    }

    /// <summary>An executor whose every step is interrupted: a silo that never comes back.</summary>
    sealed class NeverRecovers : IStepExecutor
    {
        public Grid.ModelCore.Config.ModelConfig Config => throw new NotSupportedException();
        public int Steps;
        public Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Steps);
            throw new StepInterruptedException("silo lost (fake)");
        }
        public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
            Task.FromResult(new int[lookups.Count]);
        public Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken) => Task.CompletedTask;
        public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => Task.FromResult(default(CacheStats));
        public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) => Task.FromResult(new[] { new ShardBudget(0, 4, 100, 0) });
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Fact]
    public async Task AGridThatDoesNotRecoverFailsItsRequestsAsUnavailable()
    {
        var executor = new NeverRecovers();
        await using var loop = Loop(executor, recovery: TimeSpan.Zero);
        var reader = loop.Submit(Request([1, 2, 3], 5, seed: 1), CancellationToken.None);
        var error = await Assert.ThrowsAsync<ModelPartUnavailableException>(async () => await DrainAsync(reader));
        Assert.Contains("did not recover", error.Message);
        Assert.True(executor.Steps >= 1);
    }
}
