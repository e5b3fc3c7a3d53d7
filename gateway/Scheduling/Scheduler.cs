using System.Diagnostics;
using System.Threading.Channels;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Scheduling;

/// <summary>
/// Continuous batching: one loop runs steps over every running sequence together. Waiting requests join
/// between steps while there is room; finished and cancelled ones leave; long prompts are prefilled in
/// chunks beside the running decodes. Each sequence samples with its own seeded sampler, so its output does
/// not depend on what else runs.
/// </summary>
public sealed class Scheduler : IAsyncDisposable
{
    sealed class Sequence(long id, GenerationRequest request, Channel<GenerationEvent> events, CancellationToken cancel)
    {
        public readonly long Id = id;
        public readonly GenerationRequest Request = request;
        public readonly Channel<GenerationEvent> Events = events;
        public readonly CancellationToken Cancel = cancel;
        public readonly Sampler Sampler = new(request.Sampling);
        public int Prefilled;                  // prompt tokens already in the cache
        public int Generated;
        public int LastToken = -1;
        public readonly List<SampledToken?> PromptLogprobs = new();
        public bool InCache;
    }

    readonly IStepExecutor _executor;
    readonly SchedulerOptions _options;
    readonly ILogger _logger;
    readonly Channel<Sequence> _incoming = Channel.CreateUnbounded<Sequence>();
    readonly List<Sequence> _running = new();
    readonly Queue<Sequence> _waiting = new();
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;
    readonly Queue<StepRecord> _recentSteps = new();
    long _nextId;
    long _steps;

    public int ContextLength { get; }
    public int RunningCount { get; private set; }
    public int WaitingCount { get; private set; }
    public event Action<StepRecord>? StepCompleted;
    /// <summary>After a sequence left the running batch and its latent cache was released (finished, stopped or cancelled).</summary>
    public event Action<long>? SequenceReleased;

    public Scheduler(IStepExecutor executor, SchedulerOptions options, ILogger<Scheduler> logger, int contextLength)
    {
        _executor = executor;
        _options = options;
        _logger = logger;
        ContextLength = contextLength;
        _loop = Task.Run(RunAsync);
    }

    /// <summary>The last steps (up to 1000), oldest first.</summary>
    public StepRecord[] RecentSteps() { lock (_recentSteps) return _recentSteps.ToArray(); }

    /// <summary>Queues a request; events stream until a <see cref="FinishedEvent"/>. Cancelling frees its cache.</summary>
    public ChannelReader<GenerationEvent> Submit(GenerationRequest request, CancellationToken cancellationToken)
    {
        if (request.PromptIds.Length == 0) throw new ArgumentException("the prompt is empty");
        if (request.MaxTokens < 1) throw new ArgumentException("max_tokens must be at least 1");
        var events = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var seq = new Sequence(Interlocked.Increment(ref _nextId), request, events, cancellationToken);
        if (!_incoming.Writer.TryWrite(seq)) throw new ObjectDisposedException(nameof(Scheduler));
        return events.Reader;
    }

    async Task RunAsync()
    {
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            while (_incoming.Reader.TryRead(out var s)) _waiting.Enqueue(s);
            while (_running.Count < _options.MaxRunningSequences && _waiting.Count > 0) _running.Add(_waiting.Dequeue());
            await DropCancelledAsync();
            RunningCount = _running.Count;
            WaitingCount = _waiting.Count;
            if (_running.Count == 0)
            {
                try { if (!await _incoming.Reader.WaitToReadAsync(ct)) return; }
                catch (OperationCanceledException) { return; }
                continue;
            }
            try { await StepAsync(ct); }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                // A failed step fails the sequences in it, never the scheduler.
                _logger.LogError(e, "step failed; failing {Count} sequences", _running.Count);
                foreach (var s in _running.ToArray()) await FinishAsync(s, "error", e);
            }
        }
    }

    async Task DropCancelledAsync()
    {
        foreach (var s in _running.Where(s => s.Cancel.IsCancellationRequested).ToArray())
            await FinishAsync(s, "cancelled", null);
        if (_waiting.Any(s => s.Cancel.IsCancellationRequested))
        {
            var keep = _waiting.Where(s => !s.Cancel.IsCancellationRequested).ToArray();
            foreach (var s in _waiting.Except(keep)) s.Events.Writer.TryComplete();
            _waiting.Clear();
            foreach (var s in keep) _waiting.Enqueue(s);
        }
    }

    async Task StepAsync(CancellationToken ct)
    {
        // Decodes first (one token each), then prefill chunks while the token budget lasts.
        var chunks = new List<StepChunk>();
        var members = new List<(Sequence Seq, bool Prefill, int Count)>();
        int budget = _options.MaxBatchedTokens;
        foreach (var s in _running.Where(s => s.Prefilled == s.Request.PromptIds.Length))
        {
            chunks.Add(new StepChunk(s.Id, [s.LastToken]));
            members.Add((s, false, 1));
            budget--;
        }
        foreach (var s in _running.Where(s => s.Prefilled < s.Request.PromptIds.Length))
        {
            if (budget <= 0 && chunks.Count > 0) break;
            int n = Math.Min(s.Request.PromptIds.Length - s.Prefilled, Math.Min(_options.PrefillChunkTokens, Math.Max(1, budget)));
            chunks.Add(new StepChunk(s.Id, s.Request.PromptIds[s.Prefilled..(s.Prefilled + n)], s.Request.PromptLogprobs));
            members.Add((s, true, n));
            budget -= n;
        }
        var sw = Stopwatch.StartNew();
        foreach (var m in members) m.Seq.InCache = true;
        var logits = await _executor.StepAsync(chunks, ct);
        var record = new StepRecord(++_steps, members.Count(m => !m.Prefill), members.Count(m => m.Prefill),
            members.Where(m => m.Prefill).Sum(m => m.Count), sw.Elapsed.TotalMilliseconds, members.Select(m => m.Seq.Id).ToArray());
        lock (_recentSteps)
        {
            _recentSteps.Enqueue(record);
            while (_recentSteps.Count > 1000) _recentSteps.Dequeue();
        }
        _logger.Log(_options.LogSteps ? LogLevel.Information : LogLevel.Debug,
            "step {Step}: {Decode} decode + {Prefill} prefill sequences ({PrefillTokens} prefill tokens) in {Ms:F1} ms",
            record.Step, record.DecodeSequences, record.PrefillSequences, record.PrefillTokens, record.Milliseconds);
        StepCompleted?.Invoke(record);

        int row = 0;
        foreach (var (s, prefill, count) in members)
        {
            if (prefill)
            {
                var prompt = s.Request.PromptIds;
                if (s.Request.PromptLogprobs)
                {
                    // Row r holds the distribution of the token after position Prefilled + r.
                    if (s.Prefilled == 0) s.PromptLogprobs.Add(null);
                    for (int r = 0; r < count - 1; r++)
                        s.PromptLogprobs.Add(Score(logits[row + r], prompt[s.Prefilled + r + 1], s.Request.Sampling.Logprobs));
                    row += count - 1;
                }
                s.Prefilled += count;
                var last = logits[row++];
                if (s.Prefilled < prompt.Length)
                {
                    if (s.Request.PromptLogprobs) s.PromptLogprobs.Add(Score(last, prompt[s.Prefilled], s.Request.Sampling.Logprobs));
                    continue;
                }
                if (s.Request.PromptLogprobs) s.Events.Writer.TryWrite(new PromptLogprobsEvent(s.PromptLogprobs.ToArray()));
                await EmitAsync(s, last);
            }
            else
            {
                await EmitAsync(s, logits[row++]);
            }
        }
    }

    static SampledToken Score(float[] logits, int token, int top)
    {
        var logZ = Sampler.LogSumExp(logits);
        return new SampledToken(token, logits[token] - logZ, Sampler.TopLogprobs(logits, top, logZ));
    }

    async Task EmitAsync(Sequence s, float[] logits)
    {
        if (s.Cancel.IsCancellationRequested) { await FinishAsync(s, "cancelled", null); return; }
        var token = s.Sampler.Sample(logits);
        s.Generated++;
        s.LastToken = token.Token;
        s.Events.Writer.TryWrite(new TokenEvent(token));
        if (s.Request.StopTokenIds.Contains(token.Token)) await FinishAsync(s, "stop", null);
        else if (s.Generated >= s.Request.MaxTokens || s.Request.PromptIds.Length + s.Generated >= ContextLength) await FinishAsync(s, "length", null);
    }

    async Task FinishAsync(Sequence s, string reason, Exception? error)
    {
        _running.Remove(s);
        if (s.InCache)
        {
            try { await _executor.ReleaseAsync(s.Id, CancellationToken.None); }
            catch (Exception e) { _logger.LogWarning(e, "releasing sequence {Id} failed", s.Id); }
            SequenceReleased?.Invoke(s.Id);
        }
        if (error is not null) s.Events.Writer.TryComplete(error);
        else
        {
            if (reason != "cancelled") s.Events.Writer.TryWrite(new FinishedEvent(reason, s.Request.PromptIds.Length, s.Generated));
            s.Events.Writer.TryComplete();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _incoming.Writer.TryComplete();
        _stop.Cancel();
        try { await _loop; } catch (OperationCanceledException) { }
        foreach (var s in _running.Concat(_waiting)) s.Events.Writer.TryComplete(new ObjectDisposedException(nameof(Scheduler)));
    }
}
