using System.Diagnostics;
using System.Threading.Channels;
using Grid.Gateway.Hosting;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Scheduling;

/// <summary>
/// Continuous batching, the doing half: one loop asks the <see cref="Planner"/> for each step, executes it on the
/// <see cref="IStepExecutor"/> (which samples on the attention shards) and applies the results: tokens and logprobs
/// are streamed to their requests, finished and cancelled sequences leave and free their caches, preempted ones
/// wait to be recomputed. Waiting requests join between steps while their shard has latent-cache room.
/// </summary>
public sealed class EngineLoop : IAsyncDisposable
{
    /// <summary>A request in flight: the planner's view plus what the engine needs to answer it.</summary>
    sealed class Sequence(long id, GenerationRequest request, long seed, Channel<GenerationEvent> events, CancellationToken cancel)
        : SequenceState(id, request.PromptIds)
    {
        public readonly GenerationRequest Request = request;
        public readonly long Seed = seed;
        public readonly Channel<GenerationEvent> Events = events;
        public readonly CancellationToken Cancel = cancel;
        public readonly List<SampledToken?> PromptLogprobs = new();
        /// <summary>The shard may hold a cache for it (it took part in a step since it was last released).</summary>
        public bool InCache;
        /// <summary>Recomputes since it last produced a token (a sequence that never gets through fails).</summary>
        public int Recomputes;
        /// <summary>When it was submitted; it counts against the queue bound until first admitted.</summary>
        public readonly long QueuedAt = Stopwatch.GetTimestamp();
        public bool Queued = true;
        /// <summary>The request's span (the caller's activity when it was submitted): steps link to it, routing is tagged on it.</summary>
        public readonly Activity? RequestActivity = Activity.Current;
        /// <summary>Expert groups this sequence's tokens reached, over all its steps (trace attribute).</summary>
        public readonly SortedSet<int> ExpertGroups = new();
        /// <summary>Most latent-cache bytes its shard held for it after a step (trace attribute).</summary>
        public long PeakLatentBytes;
        /// <summary>Steps it took part in, recomputes included (trace attribute).</summary>
        public int Steps;
        /// <summary>Where its current cache's first chunk starts: the prefix its shard attached from the prefix cache (0: none).</summary>
        public int CacheStart;
        /// <summary>Prompt tokens its first admission took from the prefix cache (usage.prompt_tokens_details.cached_tokens).</summary>
        public int CachedTokens = -1;
        /// <summary>Chained hashes of its full blocks of known tokens, for the routing index (extended as tokens come).</summary>
        public readonly List<UInt128> BlockHashes = new();
    }

    /// <summary>Recomputes of one sequence without a token in between before it fails.</summary>
    const int MaxRecomputes = 8;

    readonly IStepExecutor _executor;
    readonly SchedulerOptions _options;
    readonly Planner _planner;
    readonly ILogger _logger;
    readonly Channel<Sequence> _incoming = Channel.CreateUnbounded<Sequence>();
    readonly List<Sequence> _running = new();
    readonly List<Sequence> _waiting = new();
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;
    readonly Queue<StepRecord> _recentSteps = new();
    readonly Channel<(long[] Ids, (int Shard, int Blocks)[] Held)> _releases =
        Channel.CreateUnbounded<(long[], (int, int)[])>(new UnboundedChannelOptions { SingleReader = true });
    /// <summary>Blocks per shard held by caches whose release is queued or in flight: not free yet.</summary>
    readonly Dictionary<int, int> _releasing = new();
    int _blockSize = 16;
    readonly Task _releaser;
    readonly TimeSpan _recovery;
    DateTime? _interruptedSince;
    /// <summary>Requests submitted and not yet admitted (the bounded queue).</summary>
    int _queued;
    int _interruptions;
    long _nextId;
    long _steps;

    public int ContextLength { get; }
    public int RunningCount { get; private set; }
    public int WaitingCount { get; private set; }
    /// <summary>Sequences preempted so far (their caches released, recomputed later).</summary>
    public long Preemptions { get; private set; }
    /// <summary>Sequences whose caches were lost (a silo died, a lease expired) and that were recomputed.</summary>
    public long Recomputed { get; private set; }
    /// <summary>Steps interrupted by a lost silo and stepped again.</summary>
    public long Interruptions { get; private set; }
    /// <summary>Tokens of new (or recomputed) sequences looked up in their shard's prefix cache, and those found there.</summary>
    public long PrefixQueries => Interlocked.Read(ref _prefixQueries);
    public long PrefixHits => Interlocked.Read(ref _prefixHits);
    long _prefixQueries, _prefixHits;
    /// <summary>Where this gateway sent which prefixes: the cache-aware routing index.</summary>
    public PrefixRouter Router { get; }
    public event Action<StepRecord>? StepCompleted;
    /// <summary>After a sequence left the running batch and its latent cache was released (finished, stopped or cancelled).</summary>
    public event Action<long>? SequenceReleased;

    /// <param name="firstSequenceId">Ids count up from here; by default a random 64-bit base, so that two gateways (or a
    /// restarted one) driving the same shards never name the same sequence.</param>
    /// <param name="recovery">How long steps interrupted by lost silos are retried before their requests fail (Grid:Cluster:RecoverySeconds).</param>
    public EngineLoop(IStepExecutor executor, SchedulerOptions options, ILogger<EngineLoop> logger, int contextLength, long? firstSequenceId = null,
        TimeSpan? recovery = null)
    {
        _recovery = recovery ?? TimeSpan.FromSeconds(60);
        _nextId = (firstSequenceId ?? (Random.Shared.NextInt64(1L << 62) << 1)) - 1;
        _executor = executor;
        _options = options;
        _planner = new Planner(options);
        Router = new PrefixRouter();
        _logger = logger;
        ContextLength = contextLength;
        _releaser = Task.Run(ReleaseLoopAsync);
        _loop = Task.Run(SuperviseAsync);
    }

    /// <summary>The last steps (up to 1000), oldest first.</summary>
    public StepRecord[] RecentSteps() { lock (_recentSteps) return _recentSteps.ToArray(); }

    /// <summary>Queues a request; events stream until a <see cref="FinishedEvent"/>. Cancelling frees its cache.</summary>
    /// <exception cref="QueueFullException">The queue holds <c>MaxWaiting</c> requests already.</exception>
    public ChannelReader<GenerationEvent> Submit(GenerationRequest request, CancellationToken cancellationToken) =>
        SubmitAll([request], [cancellationToken])[0];

    /// <summary>
    /// Queues the choices of one request together: all of them, or none when the queue has no room for all
    /// (<see cref="QueueFullException"/>, a 429).
    /// </summary>
    public ChannelReader<GenerationEvent>[] SubmitAll(IReadOnlyList<GenerationRequest> requests, IReadOnlyList<CancellationToken> cancellationTokens)
    {
        foreach (var r in requests)
        {
            if (r.PromptIds.Length == 0) throw new ArgumentException("the prompt is empty");
            if (r.MaxTokens < 1) throw new ArgumentException("max_tokens must be at least 1");
        }
        int n = requests.Count;
        int after = Interlocked.Add(ref _queued, n);
        if (after > _options.MaxWaiting && after - n > 0)   // a request bigger than the bound still runs alone
        {
            Interlocked.Add(ref _queued, -n);
            throw new QueueFullException($"the server is at capacity: {_options.MaxWaiting} requests are already waiting; retry later", RetryAfterSeconds());
        }
        return requests.Select((r, i) => Enqueue(r, cancellationTokens[i])).ToArray();
    }

    /// <summary>A hint for Retry-After: how long the oldest waiting request has waited (at least 1 s).</summary>
    public int RetryAfterSeconds()
    {
        long oldest = Volatile.Read(ref _oldestQueuedAt);
        return oldest == 0 ? 1 : (int)Math.Clamp(Math.Ceiling(Stopwatch.GetElapsedTime(oldest).TotalSeconds), 1, 600);
    }

    long _oldestQueuedAt;

    ChannelReader<GenerationEvent> Enqueue(GenerationRequest request, CancellationToken cancellationToken)
    {
        if (request.MaxTokens < 1) throw new ArgumentException("max_tokens must be at least 1");
        var events = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // Without a seed the request gets one now: every draw is then a function of the gateway's own state.
        long seed = request.Sampling.Seed ?? Random.Shared.NextInt64();
        var seq = new Sequence(Interlocked.Increment(ref _nextId), request, seed, events, cancellationToken)
        {
            ScorePrompt = request.PromptLogprobs,
            ScoreTop = request.Sampling.Logprobs,
        };
        if (request.Timeline is { } timeline) timeline.QueuedAt = seq.QueuedAt;
        if (!_incoming.Writer.TryWrite(seq)) throw new ObjectDisposedException(nameof(EngineLoop));
        return events.Reader;
    }

    volatile TaskCompletionSource? _pause;

    /// <summary>Whether the loop holds between steps (<see cref="Pause"/>).</summary>
    public bool Paused => _pause is not null;

    /// <summary>Holds the loop before its next step: running sequences keep their caches, new requests queue (and
    /// past the queue bound get 429). For operators draining a host by hand and for overload tests.</summary>
    public void Pause() => Interlocked.CompareExchange(ref _pause, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), null);

    /// <summary>Lets a paused loop step again.</summary>
    public void Resume() => Interlocked.Exchange(ref _pause, null)?.TrySetResult();

    /// <summary>
    /// Runs the loop, and starts it again should it ever throw (a bug, which every recovery path is written to avoid):
    /// a dead loop would leave every stream of this gateway waiting forever. Its sequences fail with the error (a 500
    /// to their clients) and new requests are served.
    /// </summary>
    async Task SuperviseAsync()
    {
        while (true)
        {
            try
            {
                await RunAsync();
                return;
            }
            catch (Exception e) when (!_stop.IsCancellationRequested)
            {
                LoopRestarts++;
                _logger.LogCritical(e, "the engine loop failed; failing its {Running} running and {Waiting} waiting sequences and starting it again",
                    _running.Count, _waiting.Count);
                await FailRunningAsync(e);
                foreach (var s in _waiting.ToArray()) Reject(s, e);
                // A bug that throws at once again must not spin a core.
                try { await Task.Delay(TimeSpan.FromMilliseconds(100), _stop.Token); }
                catch (OperationCanceledException) { return; }
            }
        }
    }

    /// <summary>Times the engine loop failed and was started again (<see cref="SuperviseAsync"/>); 0 unless there is a bug.</summary>
    public int LoopRestarts { get; private set; }

    async Task RunAsync()
    {
        // Steps are spans of their own (a step serves many requests): never children of whoever created the loop.
        Activity.Current = null;
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            while (_incoming.Reader.TryRead(out var s)) _waiting.Add(s);
            await DropCancelledAsync();
            ExpireQueued();
            RunningCount = _running.Count;
            WaitingCount = _waiting.Count;
            if (_pause is { } pause)
            {
                // Paused between steps (an operator's /debug/pause): requests still queue, and past the bound get 429.
                try { await pause.Task.WaitAsync(TimeSpan.FromMilliseconds(50), ct); }
                catch (TimeoutException) { }
                catch (OperationCanceledException) { return; }
                continue;
            }
            if (_running.Count == 0 && _waiting.Count == 0)
            {
                try { if (!await _incoming.Reader.WaitToReadAsync(ct)) return; }
                catch (OperationCanceledException) { return; }
                continue;
            }
            StepPlan? plan = null;
            try
            {
                var budgets = await _executor.GetBudgetsAsync(ct);
                if (budgets.Length > 0) _blockSize = budgets[0].BlockSize;
                if (budgets.Length > 0) Router.Resize(budgets);
                plan = _planner.Plan(_running, _waiting, Pending(budgets), CachedPrefixes(budgets));
                await ApplyAdmissionsAsync(plan);
                if (await AttachPrefixesAsync(ct))
                {
                    // Some sequences start from cached prefixes: plan the step again with what they still need.
                    plan = _planner.Plan(_running, [], Pending(await _executor.GetBudgetsAsync(ct)));
                    await ApplyAdmissionsAsync(plan);
                }
                if (plan.Chunks.Count > 0)
                {
                    await StepAsync(plan, ct);
                    _interruptedSince = null;
                    _interruptions = 0;
                }
                else if (plan.Admitted.Count == 0 && plan.Refused.Count == 0 && plan.Preempted.Count == 0)
                {
                    // Nothing can run until something changes (a cancel, a new request, room freed): wait for it.
                    try { await _incoming.Reader.WaitToReadAsync(ct).AsTask().WaitAsync(TimeSpan.FromMilliseconds(50), ct); }
                    catch (TimeoutException) { }
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (StepRefusedException e)
            {
                // The shard changed nothing: recompute the sequences whose caches it does not hold, re-queue those it has no room for.
                await RecoverAsync(e);
            }
            catch (StepInterruptedException e)
            {
                // A silo the step needed is gone. Step again (shards and groups re-place themselves; lost caches come
                // back as refusals and are recomputed; a surviving shard that had committed its part rewinds it), up to
                // the recovery deadline.
                Interruptions++;
                _interruptedSince ??= DateTime.UtcNow;
                _interruptions++;
                if (DateTime.UtcNow - _interruptedSince > _recovery)
                {
                    var error = new ModelPartUnavailableException($"the grid did not recover within {_recovery.TotalSeconds:F0} s: {e.Message}", e);
                    _logger.LogError(e, "step interrupted for {Seconds:F0} s; failing {Count} sequences", _recovery.TotalSeconds, _running.Count);
                    await FailRunningAsync(error);
                    _interruptedSince = null;
                }
                else
                {
                    _logger.LogWarning("step interrupted ({Error}); stepping again", e.Message);
                    try { await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(2000, 100 * (1 << Math.Min(_interruptions, 5)))), ct); }
                    catch (OperationCanceledException) { return; }
                }
            }
            catch (ModelPartUnavailableException e)
            {
                // Nothing can serve a part of the model: the sequences of this step fail at once (a 503), the rest wait.
                var failed = plan?.Chunks.Select(c => (Sequence)c.Sequence).Distinct().ToArray() ?? _running.ToArray();
                _logger.LogError("{Error}; failing {Count} sequences", e.Message, failed.Length);
                foreach (var s in failed) await FinishAsync(s, "error", e);
            }
            catch (Exception e)
            {
                // A failed step fails the sequences in it, never the loop.
                _logger.LogError(e, "step failed; failing {Count} sequences", _running.Count);
                await FailRunningAsync(e);
            }
        }
    }

    /// <summary>
    /// Prefix caching: every running sequence about to be (re)computed from nothing (just admitted, or recomputed after
    /// a lost cache) asks its shard to start it from the longest cached prefix of its known tokens; it then continues
    /// from there (the chunk protocol stays strict: its next chunk names that position). Sequences that want prompt
    /// logprobs compute their whole prompt. Returns whether any prefix was found. A failed lookup (a shard that does
    /// not answer) only means no prefix: the sequence's first chunk at 0 starts it anyway.
    /// </summary>
    async Task<bool> AttachPrefixesAsync(CancellationToken ct)
    {
        var fresh = _running.Where(s => s.Computed == 0 && !s.InCache && !s.ScorePrompt && s.Shard >= 0 && s.Tokens.Count > 1).ToList();
        if (fresh.Count == 0) return false;
        int[] matched;
        try { matched = await _executor.AttachPrefixAsync(fresh.Select(s => (s.Shard, new PrefixLookup(s.Id, s.Tokens.ToArray()))).ToList(), ct); }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            _logger.LogWarning("prefix-cache lookup failed ({Error}); computing the {Count} sequences from their first token", e.Message, fresh.Count);
            foreach (var s in fresh) s.InCache = true;   // the shard may have attached some: a release frees them
            return false;
        }
        bool any = false;
        for (int i = 0; i < fresh.Count; i++)
        {
            var s = fresh[i];
            if (matched[i] < 0)
            {
                // Its shard did not answer (the others did): computed from its first token, as above.
                s.InCache = true;
                continue;
            }
            int m = Math.Clamp(matched[i], 0, s.Tokens.Count - 1);
            s.InCache = true;
            s.Computed = s.CacheStart = m;
            if (s.CachedTokens < 0) s.CachedTokens = Math.Min(m, s.Prompt.Length);
            Interlocked.Add(ref _prefixQueries, s.Tokens.Count);
            Interlocked.Add(ref _prefixHits, m);
            if (m > 0)
            {
                any = true;
                Router.Record(s.Shard, Hashes(s, m));
            }
        }
        return any;
    }

    /// <summary>The sequence's chained block hashes over its first <paramref name="tokens"/> known tokens (full blocks).</summary>
    IReadOnlyList<UInt128> Hashes(Sequence s, int tokens)
    {
        int blocks = Math.Min(tokens, s.Tokens.Count) / _blockSize;
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Tokens);
        while (s.BlockHashes.Count < blocks)
        {
            int b = s.BlockHashes.Count;
            s.BlockHashes.Add(ModelCore.Cache.BlockHash.Next(b == 0 ? ModelCore.Cache.BlockHash.Root : s.BlockHashes[b - 1], span.Slice(b * _blockSize, _blockSize)));
        }
        return s.BlockHashes.Count == blocks ? s.BlockHashes : s.BlockHashes.GetRange(0, blocks);
    }

    /// <summary>
    /// For the planner's cache-aware routing: per waiting sequence that may be admitted now, per shard, how many of its
    /// tokens that shard's cache probably holds (this gateway's index of what it computed there).
    /// </summary>
    IReadOnlyDictionary<SequenceState, int[]>? CachedPrefixes(ShardBudget[] budgets)
    {
        if (budgets.Length < 2 || _waiting.Count == 0 || Router.IsEmpty) return null;
        var result = new Dictionary<SequenceState, int[]>();
        foreach (var s in _waiting.Take(Math.Max(1, _options.MaxRunningSequences - _running.Count)))
        {
            if (s.ScorePrompt) continue;
            var hashes = Hashes(s, s.Tokens.Count - 1);
            result[s] = budgets.Select(b => Router.Match(b.Shard, hashes) * _blockSize).ToArray();
        }
        return result;
    }

    /// <summary>
    /// After a refused step: a sequence the shard does not hold at the expected length (its cache was lost with a
    /// silo, or freed when a lease expired) is recomputed where it is: prompt + generated prefilled again under a new
    /// cache id; one that did not fit goes back to the head of the queue (preempted). The others step again unchanged.
    /// </summary>
    async Task RecoverAsync(StepRefusedException e)
    {
        var byId = _running.ToDictionary(s => s.Id);
        var lost = new List<Sequence>();
        var noRoom = new List<Sequence>();
        foreach (var r in e.Refusals)
            if (byId.TryGetValue(r.SequenceId, out var s)) (r.Reason == RefusalReason.NoRoom ? noRoom : lost).Add(s);
        // A copy: a sequence past the limit leaves the lists inside the loop (enumerating them there threw and ended the engine loop).
        foreach (var s in lost.Concat(noRoom).Distinct().ToList())
        {
            if (++s.Recomputes > MaxRecomputes)
            {
                await FinishAsync(s, "error", new InvalidOperationException($"sequence {s.Id} was refused by its shard {s.Recomputes} times in a row: {e.Message}"));
                lost.Remove(s);
                noRoom.Remove(s);
            }
        }
        foreach (var s in lost)
        {
            Restart(s);
            Recomputed++;
        }
        if (lost.Count > 0) _logger.LogWarning("recomputing {Count} sequences whose latent caches were lost ({Error})", lost.Count, e.Message);
        if (noRoom.Count > 0)
        {
            Release(noRoom);
            Requeue(noRoom);
            _logger.LogInformation("re-queued {Count} sequences their shard had no latent-cache room for", noRoom.Count);
        }
    }

    /// <summary>Preempted (their caches already released): back to the head of the queue, to be recomputed.</summary>
    void Requeue(IReadOnlyList<Sequence> victims)
    {
        foreach (var s in victims)
        {
            _running.Remove(s);
            Restart(s);
            s.Shard = -1;
        }
        _waiting.InsertRange(0, victims.OrderBy(s => s.Id));
        Preemptions += victims.Count;
    }

    /// <summary>Forgets the sequence's cache: it is prefilled again from position 0 under a new cache id.</summary>
    void Restart(Sequence s)
    {
        if (s.InCache) Release([s]);
        s.Id = Interlocked.Increment(ref _nextId);
        s.Computed = 0;
        s.CacheStart = 0;
        if (s.ScorePrompt) s.PromptLogprobs.Clear();
    }

    /// <summary>Requests that waited past <c>MaxQueueSeconds</c> without being admitted leave with a 429.</summary>
    void ExpireQueued()
    {
        var queued = _waiting.Where(s => s.Queued).ToList();
        Volatile.Write(ref _oldestQueuedAt, queued.Count == 0 ? 0 : queued.Min(s => s.QueuedAt));
        if (_options.MaxQueueSeconds <= 0) return;
        var limit = TimeSpan.FromSeconds(_options.MaxQueueSeconds);
        foreach (var s in queued.Where(s => Stopwatch.GetElapsedTime(s.QueuedAt) > limit))
            Reject(s, new QueueFullException(
                $"the request waited {_options.MaxQueueSeconds:F0} s without a place in the running batch; the server is at capacity, retry later", 1));
    }

    /// <summary>A waiting sequence leaves the queue without running: its stream ends with <paramref name="error"/>.</summary>
    void Reject(Sequence s, Exception error)
    {
        _waiting.Remove(s);
        Dequeued(s);
        s.Events.Writer.TryComplete(error);
    }

    /// <summary>Every running sequence fails with <paramref name="error"/>.</summary>
    async Task FailRunningAsync(Exception error)
    {
        foreach (var s in _running.ToArray()) await FinishAsync(s, "error", error);
    }

    /// <summary>The sequence no longer counts against the queue bound (admitted, or gone).</summary>
    void Dequeued(Sequence s)
    {
        if (!s.Queued) return;
        s.Queued = false;
        Interlocked.Decrement(ref _queued);
    }

    async Task DropCancelledAsync()
    {
        foreach (var s in _running.Where(s => s.Cancel.IsCancellationRequested).ToArray())
            await FinishAsync(s, "cancelled", null);
        foreach (var s in _waiting.Where(s => s.Cancel.IsCancellationRequested).ToArray())
        {
            _waiting.Remove(s);
            Dequeued(s);
            if (s.InCache) Release([s]);
            s.Events.Writer.TryComplete();
        }
    }

    /// <summary>Moves the plan's admissions, preemptions and refusals between the queues before the step runs.</summary>
    async Task ApplyAdmissionsAsync(StepPlan plan)
    {
        foreach (var s in plan.Refused.Cast<Sequence>())
        {
            var error = new InvalidOperationException(
                $"sequence {s.Id} needs more latent cache ({s.Tokens.Count + 1} tokens) than an attention shard holds");
            if (_running.Contains(s)) await FinishAsync(s, "error", error);
            else Reject(s, error);
        }
        if (plan.Preempted.Count > 0)
        {
            var victims = plan.Preempted.Cast<Sequence>().ToList();
            // The plan counts the victims' blocks as free in this very step: their release must land first. The
            // shard is alive (this is memory pressure, not a failure); if the call fails anyway, the step's own
            // refusal (no room) re-queues what does not fit.
            await ReleaseNowAsync(victims);
            Requeue(victims);
            _logger.LogInformation("preempted {Count} sequences for latent-cache room (recomputed when room returns)", victims.Count);
        }
        foreach (var s in plan.Admitted.Cast<Sequence>())
        {
            if (s.Queued && s.Request.Timeline is { } timeline) timeline.AdmittedAt = Stopwatch.GetTimestamp();
            _waiting.Remove(s);
            Dequeued(s);
            _running.Add(s);
        }
    }

    async Task StepAsync(StepPlan plan, CancellationToken ct)
    {
        var chunks = plan.Chunks.Select(c =>
        {
            var s = (Sequence)c.Sequence;
            s.InCache = true;
            var chunk = Planner.ToStepChunk(c, s.Request.Sampling, s.Seed, s.Request.Choice);
            // Structured output starts with the sequence's first chunk: at 0, or after the prefix its shard had cached.
            return c.Start == s.CacheStart && s.Request.Constraint is { } constraint ? chunk with { Constraint = constraint } : chunk;
        }).ToList();
        // One span per step, linked to the span of every request it serves (a step is shared, so it has no one
        // parent); the grain calls of the step are its children (Orleans activity propagation).
        var sequences = plan.Chunks.Select(c => (Sequence)c.Sequence).ToArray();
        using var span = GridTelemetry.ActivitySource.StartActivity("grid.step", ActivityKind.Internal, default(ActivityContext),
            links: sequences.Select(s => s.RequestActivity).OfType<Activity>().Distinct().Select(a => new ActivityLink(a.Context)).ToArray());
        span?.SetTag("grid.step.sequences", sequences.Length);
        span?.SetTag("grid.step.tokens", plan.Chunks.Sum(c => c.Count));
        var sw = Stopwatch.StartNew();
        ChunkResult[] results;
        try { results = await _executor.StepAsync(chunks, ct); }
        catch (Exception e)
        {
            span?.SetStatus(ActivityStatusCode.Error, e.Message);
            throw;
        }
        span?.SetTag("grid.expert_groups", results.SelectMany(r => r.ExpertGroups).Distinct().Order().ToArray());
        int decode = plan.Chunks.Count(c => c.Count == 1 && c.Sample);
        var record = new StepRecord(++_steps, decode, plan.Chunks.Count - decode,
            plan.Chunks.Where(c => !(c.Count == 1 && c.Sample)).Sum(c => c.Count), sw.Elapsed.TotalMilliseconds,
            plan.Chunks.Select(c => c.Sequence.Id).ToArray());
        lock (_recentSteps)
        {
            _recentSteps.Enqueue(record);
            while (_recentSteps.Count > 1000) _recentSteps.Dequeue();
        }
        _logger.Log(_options.LogSteps ? LogLevel.Information : LogLevel.Debug,
            "step {Step}: {Decode} decode + {Prefill} prefill sequences ({PrefillTokens} prefill tokens) in {Ms:F1} ms",
            record.Step, record.DecodeSequences, record.PrefillSequences, record.PrefillTokens, record.Milliseconds);
        StepCompleted?.Invoke(record);

        for (int i = 0; i < plan.Chunks.Count; i++)
            await ApplyAsync((Sequence)plan.Chunks[i].Sequence, plan.Chunks[i], results[i]);
    }

    async Task ApplyAsync(Sequence s, PlannedChunk chunk, ChunkResult result)
    {
        s.Computed += chunk.Count;
        // The routing index learns the full blocks this sequence now has on its shard.
        if (s.Computed / _blockSize > chunk.Start / _blockSize) Router.Record(s.Shard, Hashes(s, s.Computed));
        s.Steps++;
        s.ExpertGroups.UnionWith(result.ExpertGroups);
        s.PeakLatentBytes = Math.Max(s.PeakLatentBytes, result.LatentBytes);
        if (chunk.ScoreNext is not null)
        {
            if (chunk.Start == 0) s.PromptLogprobs.Add(null);   // the first prompt token has no logprob
            s.PromptLogprobs.AddRange(result.Scored);
        }
        if (!chunk.Sample) return;
        if (s.Cancel.IsCancellationRequested) { await FinishAsync(s, "cancelled", null); return; }
        if (s.ScorePrompt)
        {
            s.Events.Writer.TryWrite(new PromptLogprobsEvent(s.PromptLogprobs.ToArray()));
            s.ScorePrompt = false;
        }
        var token = result.Next ?? throw new InvalidOperationException($"sequence {s.Id}: the step returned no token");
        s.Recomputes = 0;
        s.Tokens.Add(token.Token);
        s.Events.Writer.TryWrite(new TokenEvent(token));
        // Before min_tokens the shard masks the stop tokens; they end nothing there either (as vLLM's stop checker).
        if (s.Request.StopTokenIds.Contains(token.Token) && s.Generated >= s.Request.Sampling.MinTokens) await FinishAsync(s, "stop", null);
        else if (s.Generated >= s.Request.MaxTokens || s.Tokens.Count >= ContextLength) await FinishAsync(s, "length", null);
    }

    /// <summary>
    /// Queues the sequences' caches for release. Releases run in the background (batched, one call per shard), never
    /// in the loop's path: a release that waits on a dead silo never holds up a step.
    /// </summary>
    void Release(IReadOnlyList<Sequence> sequences)
    {
        var held = sequences.Where(s => s.InCache).ToList();
        if (held.Count == 0) return;
        foreach (var s in held) s.InCache = false;
        // What the shard may hold for each: its computed tokens plus a chunk that was reserved but not committed.
        var blocks = held.Where(s => s.Shard >= 0)
            .Select(s => (s.Shard, (Math.Min(s.Tokens.Count + 1, s.Computed + _options.PrefillChunkTokens) + _blockSize - 1) / _blockSize)).ToArray();
        lock (_releasing)
            foreach (var (shard, n) in blocks) _releasing[shard] = _releasing.GetValueOrDefault(shard) + n;
        _releases.Writer.TryWrite((held.Select(s => s.Id).ToArray(), blocks));
    }

    async Task ReleaseNowAsync(IReadOnlyList<Sequence> sequences)
    {
        var held = sequences.Where(s => s.InCache).ToList();
        if (held.Count == 0) return;
        try { await _executor.ReleaseAsync(held.Select(s => s.Id).ToArray(), CancellationToken.None); }
        catch (Exception e) { _logger.LogWarning("releasing preempted sequences failed: {Error}", e.Message); }
        foreach (var s in held)
        {
            s.InCache = false;
            SequenceReleased?.Invoke(s.Id);
        }
    }

    async Task ReleaseLoopAsync()
    {
        Activity.Current = null;
        while (await _releases.Reader.WaitToReadAsync().ConfigureAwait(false))
        {
            var ids = new List<long>();
            var held = new List<(int Shard, int Blocks)>();
            while (_releases.Reader.TryRead(out var batch))
            {
                ids.AddRange(batch.Ids);
                held.AddRange(batch.Held);
            }
            try { await _executor.ReleaseAsync(ids, CancellationToken.None); }
            catch (Exception e) { _logger.LogWarning("releasing sequences {Ids} failed (their shard frees them when this gateway's lease lapses): {Error}", ids, e.Message); }
            lock (_releasing)
                foreach (var (shard, blocks) in held) _releasing[shard] -= blocks;
            foreach (var id in ids) SequenceReleased?.Invoke(id);
        }
    }

    /// <summary>The shards' budgets with the blocks of queued releases still counted as held (they are, until the release lands).</summary>
    ShardBudget[] Pending(ShardBudget[] budgets)
    {
        lock (_releasing)
            return _releasing.Count == 0 ? budgets
                : budgets.Select(b => _releasing.TryGetValue(b.Shard, out var n) && n > 0 ? b with { OwnBlocks = b.OwnBlocks - n } : b).ToArray();
    }

    Task FinishAsync(Sequence s, string reason, Exception? error)
    {
        _running.Remove(s);
        Release([s]);
        TagRequest(s, reason);
        if (error is not null) s.Events.Writer.TryComplete(error);
        else
        {
            if (reason != "cancelled") s.Events.Writer.TryWrite(new FinishedEvent(reason, s.Prompt.Length, s.Generated) { CachedTokens = Math.Max(0, s.CachedTokens) });
            s.Events.Writer.TryComplete();
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Puts the sequence's routing on its request's span before the request sees its end: the expert groups its tokens
    /// reached and the latent-cache bytes it held (merged over the request's choices, which all run on this loop), and
    /// an event per choice.
    /// </summary>
    static void TagRequest(Sequence s, string reason)
    {
        if (s.RequestActivity is not { } request) return;
        var groups = request.GetTagItem("grid.expert_groups") is int[] known ? s.ExpertGroups.Union(known).Order().ToArray() : s.ExpertGroups.ToArray();
        request.SetTag("grid.expert_groups", groups);
        request.SetTag("grid.latent_cache_bytes", (request.GetTagItem("grid.latent_cache_bytes") is long held ? held : 0) + s.PeakLatentBytes);
        request.SetTag("grid.steps", (request.GetTagItem("grid.steps") is int steps ? steps : 0) + s.Steps);
        request.AddEvent(new ActivityEvent("grid.choice.finished", tags: new ActivityTagsCollection
        {
            ["grid.choice"] = s.Request.Choice,
            ["finish_reason"] = reason,
            ["grid.expert_groups"] = s.ExpertGroups.ToArray(),
            ["grid.latent_cache_bytes"] = s.PeakLatentBytes,
            ["grid.steps"] = s.Steps,
            ["grid.generated_tokens"] = s.Generated,
        }));
    }

    public async ValueTask DisposeAsync()
    {
        _incoming.Writer.TryComplete();
        _stop.Cancel();
        try { await _loop; } catch (OperationCanceledException) { }
        foreach (var s in _running.Concat(_waiting)) s.Events.Writer.TryComplete(new ObjectDisposedException(nameof(EngineLoop)));
        while (_incoming.Reader.TryRead(out var late)) late.Events.Writer.TryComplete(new ObjectDisposedException(nameof(EngineLoop)));
        _releases.Writer.TryComplete();
        try { await _releaser; } catch { }
    }
}

/// <summary>The queue is full, or a request waited too long for a place: a 429 with <see cref="RetryAfterSeconds"/>.</summary>
public sealed class QueueFullException(string message, int retryAfterSeconds) : Exception(message)
{
    public int RetryAfterSeconds { get; } = retryAfterSeconds;
}
