using Grid.Configuration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Config;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>
/// A fake shard: keeps each sequence's tokens as its "cache", refuses chunks that do not continue it exactly (as
/// the real shard does), and "samples" a token that is a pure function of the sequence's tokens and the draw key,
/// so any recompute must reproduce the same output.
/// </summary>
sealed class FakeExecutor(int blockSize, int totalBlocks) : IStepExecutor
{
    public readonly Dictionary<long, List<int>> Caches = new();
    public readonly List<IReadOnlyList<StepChunk>> Steps = new();
    public readonly List<long> Released = new();
    readonly object _lock = new();

    public ModelConfig Config => throw new NotSupportedException();

    /// <summary>Read from the test's thread while the engine steps: under the lock.</summary>
    public int CacheCount { get { lock (_lock) return Caches.Count; } }
    public long[] ReleasedIds { get { lock (_lock) return Released.ToArray(); } }

    readonly SemaphoreSlim _gate = new(0);
    volatile bool _gated;

    /// <summary>While gated, each step waits for <see cref="AllowSteps"/>: the test decides when the engine may go on.</summary>
    public void Gate() => _gated = true;
    public void AllowSteps(int n) => _gate.Release(n);
    public void Ungate() { _gated = false; _gate.Release(1000); }

    public static int NextToken(IReadOnlyList<int> tokens, DrawKey key) =>
        (int)((tokens.Aggregate(17L, (h, t) => h * 31 + t) + key.Seed * 7 + key.Choice * 13 + key.Index) & 0x3FF) + 10;

    /// <summary>Releases wait for this while set (a shard that does not answer).</summary>
    public TaskCompletionSource? HoldReleases;
    int _interruptNext;

    /// <summary>A silo dies: every cache is gone and the next step is interrupted (the shard comes back empty).</summary>
    public void LoseCaches()
    {
        lock (_lock)
        {
            Caches.Clear();
            _interruptNext = 1;
        }
    }

    /// <summary>Chunks this predicate picks are refused (mismatch) whatever their position: a shard that keeps refusing a sequence.</summary>
    public Func<StepChunk, bool>? AlwaysRefuse;

    public async Task<ChunkResult[]> StepAsync(IReadOnlyList<StepChunk> chunks, CancellationToken cancellationToken)
    {
        if (_gated) await _gate.WaitAsync(cancellationToken);
        if (Interlocked.Exchange(ref _interruptNext, 0) == 1) throw new StepInterruptedException("silo lost (fake)");
        return Step(chunks);
    }

    ChunkResult[] Step(IReadOnlyList<StepChunk> chunks)
    {
        lock (_lock)
        {
            Steps.Add(chunks);
            // As the real shard: a chunk must continue what is held (or start again at 0); otherwise nothing changes.
            var refused = chunks.Where(c => AlwaysRefuse?.Invoke(c) == true || c.Position != 0 && c.Position != (Caches.TryGetValue(c.SequenceId, out var held) ? held.Count : 0))
                .Select(c => new ChunkRefusal(c.SequenceId, RefusalReason.Mismatch, c.Position, Caches.TryGetValue(c.SequenceId, out var h) ? h.Count : 0)).ToList();
            if (refused.Count > 0) throw new StepRefusedException(refused);
            foreach (var c in chunks.Where(c => c.Position == 0)) Caches.Remove(c.SequenceId);
            int used = Caches.Values.Sum(c => (c.Count + blockSize - 1) / blockSize);
            var results = new ChunkResult[chunks.Count];
            for (int i = 0; i < chunks.Count; i++)
            {
                var c = chunks[i];
                c.Validate();
                if (!Caches.TryGetValue(c.SequenceId, out var cache)) Caches[c.SequenceId] = cache = new();
                if (cache.Count != c.Position) throw new InvalidOperationException($"sequence {c.SequenceId}: position {c.Position}, cache {cache.Count}");
                used += (cache.Count + c.Tokens.Length + blockSize - 1) / blockSize - (cache.Count + blockSize - 1) / blockSize;
                var scored = (c.ScoreNext ?? []).Select((t, r) => new SampledToken(t, -1.0 - (c.Position + r), [])).ToArray();
                cache.AddRange(c.Tokens);
                var next = c.Sample is { } s ? new SampledToken(NextToken(cache, s.Key), -0.5, []) : null;
                results[i] = new ChunkResult(next, scored);
            }
            if (used > totalBlocks) throw new InvalidOperationException($"latent cache over budget: {used} > {totalBlocks} blocks");
            return results;
        }
    }

    /// <summary>The fake keeps no prefix cache: every sequence starts from position 0.</summary>
    public Task<int[]> AttachPrefixAsync(IReadOnlyList<(int Shard, PrefixLookup Lookup)> lookups, CancellationToken cancellationToken) =>
        Task.FromResult(new int[lookups.Count]);

    public async Task ReleaseAsync(IReadOnlyList<long> sequenceIds, CancellationToken cancellationToken)
    {
        if (HoldReleases is { } hold) await hold.Task;
        lock (_lock)
            foreach (var id in sequenceIds)
            {
                Caches.Remove(id);
                Released.Add(id);
            }
    }

    public Task<CacheStats> GetCacheStatsAsync(CancellationToken cancellationToken) => Task.FromResult(default(CacheStats));

    public Task<ShardBudget[]> GetBudgetsAsync(CancellationToken cancellationToken) =>
        Task.FromResult(new[] { new ShardBudget(0, blockSize, totalBlocks, 0) });

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>The engine loop over the fake executor: it executes plans and applies their results.</summary>
public sealed class EngineLoopTests
{
    static EngineLoop Loop(FakeExecutor executor, int chunk = 256, int maxBatched = 512) =>
        new(executor, new SchedulerOptions { PrefillChunkTokens = chunk, MaxBatchedTokens = maxBatched }, NullLogger<EngineLoop>.Instance, contextLength: 1 << 20, firstSequenceId: 1);

    static GenerationRequest Request(int[] prompt, int maxTokens, long seed = 5, int choice = 0, bool promptLogprobs = false) => new()
    {
        PromptIds = prompt,
        MaxTokens = maxTokens,
        Sampling = new SamplingParams { Temperature = 1, Seed = seed },
        Choice = choice,
        PromptLogprobs = promptLogprobs,
    };

    static async Task<List<GenerationEvent>> DrainAsync(EngineLoop loop, GenerationRequest request, CancellationToken ct = default)
    {
        var events = new List<GenerationEvent>();
        await foreach (var e in loop.Submit(request, ct).ReadAllAsync(CancellationToken.None)) events.Add(e);
        return events;
    }

    static int[] Tokens(IEnumerable<GenerationEvent> events) => events.OfType<TokenEvent>().Select(t => t.Token.Token).ToArray();

    /// <summary>What the fake generates for a request alone: the reference every batching and preemption must reproduce.</summary>
    static int[] Expected(GenerationRequest r, long seed)
    {
        var tokens = r.PromptIds.ToList();
        for (int i = 0; i < r.MaxTokens; i++) tokens.Add(FakeExecutor.NextToken(tokens, new DrawKey(seed, r.Choice, i)));
        return tokens.Skip(r.PromptIds.Length).ToArray();
    }

    [Fact]
    public async Task PromptLogprobsArriveOnceWithANullFirstRowAcrossChunks()
    {
        await using var loop = Loop(new FakeExecutor(4, 100), chunk: 3);
        var prompt = new[] { 11, 12, 13, 14, 15, 16, 17 };
        var events = await DrainAsync(loop, Request(prompt, 2, promptLogprobs: true));
        var rows = Assert.Single(events.OfType<PromptLogprobsEvent>()).Tokens;
        Assert.Equal(prompt.Length, rows.Length);
        Assert.Null(rows[0]);
        Assert.Equal(prompt[1..], rows[1..].Select(r => r!.Token));
        Assert.Equal(Enumerable.Range(0, 6).Select(p => -1.0 - p), rows[1..].Select(r => r!.Logprob));
        Assert.IsType<PromptLogprobsEvent>(events[0]);
        Assert.Equal(new FinishedEvent("length", 7, 2), events[^1]);
    }

    [Fact]
    public async Task CancellingFreesTheCacheAndAdmitsWhatWasWaitingForIt()
    {
        // Room for one 24-token prompt at a time (8 blocks of 4 tokens; each needs 7 with its first token).
        var executor = new FakeExecutor(4, 8);
        executor.Gate();
        await using var loop = Loop(executor);
        using var cancel = new CancellationTokenSource();
        var endless = loop.Submit(Request(Enumerable.Range(20, 24).ToArray(), int.MaxValue / 2), cancel.Token);
        executor.AllowSteps(1);
        Assert.True(await endless.WaitToReadAsync());              // it runs: the first token is out
        var second = DrainAsync(loop, Request(Enumerable.Range(60, 24).ToArray(), 3));
        executor.AllowSteps(3);                                   // three more steps: the second still waits for room
        while (executor.Steps.Count < 4) await Task.Yield();
        Assert.All(executor.Steps, s => Assert.Equal([1L], s.Select(c => c.SequenceId)));
        Assert.Equal(1, loop.WaitingCount);
        cancel.Cancel();
        executor.Ungate();
        var seen = new List<GenerationEvent>();
        await foreach (var e in endless.ReadAllAsync()) seen.Add(e);
        Assert.DoesNotContain(seen, e => e is FinishedEvent);      // cancelled: no finish event
        await Poll.UntilAsync(() => Task.FromResult(executor.ReleasedIds.Contains(1L)), "the cancelled sequence's cache was not released");
        var events = await second;                                 // admitted once the first's blocks came back
        Assert.Equal(new FinishedEvent("length", 24, 3), events[^1]);
        await Poll.UntilAsync(() => Task.FromResult(executor.CacheCount == 0), "caches were left on the shard");
    }

    [Fact]
    public async Task PreemptedSequencesAreRecomputedAndProduceTheSameTokens()
    {
        // 6 blocks of 4 tokens; three requests of 4 + 12 tokens (4 blocks each at the end) cannot all stay resident.
        var executor = new FakeExecutor(4, 6);
        await using var loop = Loop(executor);
        var requests = Enumerable.Range(0, 3).Select(i => Request([1 + i, 2, 3, 4], 12, seed: 100 + i)).ToArray();
        var runs = await Task.WhenAll(requests.Select(r => DrainAsync(loop, r)));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Expected(requests[i], 100 + i), Tokens(runs[i]));
            Assert.Equal(new FinishedEvent("length", 4, 12), runs[i][^1]);
        }
        Assert.True(loop.Preemptions > 0, "the budget forces preemption");
        // Every cache is released at the end (releases run in the background).
        await Poll.UntilAsync(() => Task.FromResult(executor.CacheCount == 0), "caches were left on the shard");
    }

    [Fact]
    public async Task SeededOutputDoesNotDependOnBatchOrChunking()
    {
        var request = Request(Enumerable.Range(30, 20).ToArray(), 10, seed: 9, choice: 2);
        var alone = Tokens(await DrainAsync(Loop(new FakeExecutor(4, 1000)), request));
        Assert.Equal(Expected(request, 9), alone);
        await using var chunked = Loop(new FakeExecutor(4, 1000), chunk: 3, maxBatched: 5);
        var others = Enumerable.Range(0, 31).Select(i => DrainAsync(chunked, Request([i + 1, 5, 6], 10, seed: i))).ToList();
        Assert.Equal(alone, Tokens(await DrainAsync(chunked, request)));
        await Task.WhenAll(others);
    }

    [Fact]
    public async Task AStaleCacheUnderTheSameIdIsReplacedNotContinued()
    {
        var executor = new FakeExecutor(4, 100);
        await using var loop = Loop(executor);
        executor.Caches[1] = [99, 98, 97];   // a cache left under the id the next request gets: position 0 starts it again
        var request = Request([1, 2, 3], 4);
        var events = await DrainAsync(loop, request);
        Assert.Equal(Expected(request, 5), Tokens(events));
        Assert.Equal(new FinishedEvent("length", 3, 4), events[^1]);
    }
}
