using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The gateway's OpenTelemetry instruments (Meter and ActivitySource "Grid.Gateway"). Gauges read cached values
/// that <see cref="ServingEngine"/> refreshes after every scheduler step and release: observable callbacks are
/// synchronous and must not wait on the inference thread.
/// </summary>
public sealed class GridTelemetry : IDisposable
{
    public const string Name = "Grid.Gateway";
    public static readonly ActivitySource ActivitySource = new(Name);

    readonly Meter _meter;
    static readonly InstrumentAdvice<double> Buckets = new()
    {
        HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60],
    };
    /// <summary>Request-length buckets as vLLM's (1, 2, 5 per decade).</summary>
    static readonly InstrumentAdvice<long> TokenBuckets = new()
    {
        HistogramBucketBoundaries = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000],
    };
    /// <summary>Latency buckets for whole requests (queue, prefill, end to end), up to 10 minutes.</summary>
    static readonly InstrumentAdvice<double> RequestBuckets = new()
    {
        HistogramBucketBoundaries = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600],
    };
    public Counter<long> Requests { get; }
    /// <summary>Counts a request refused with 429 (queue full or waited too long).</summary>
    public void Rejected() => Interlocked.Increment(ref _rejected);
    long _rejected;
    public Counter<long> PromptTokens { get; }
    public Counter<long> GenerationTokens { get; }
    public Histogram<double> TimeToFirstToken { get; }
    public Histogram<double> InterTokenLatency { get; }
    public Histogram<double> RequestDuration { get; }
    /// <summary>vLLM's <c>request_queue_time_seconds</c>: submitted until first admitted to the running batch, per request.</summary>
    public Histogram<double> RequestQueueTime { get; }
    /// <summary>vLLM's <c>request_prefill_time_seconds</c>: first admitted until the first token, per request.</summary>
    public Histogram<double> RequestPrefillTime { get; }
    /// <summary>vLLM's <c>e2e_request_latency_seconds</c>: arrival until the last choice finished, per request.</summary>
    public Histogram<double> EndToEndLatency { get; }
    /// <summary>vLLM's <c>request_prompt_tokens</c>: prompt tokens per finished request.</summary>
    public Histogram<long> RequestPromptTokens { get; }
    /// <summary>vLLM's <c>request_generation_tokens</c>: generated tokens per finished request (all its choices).</summary>
    public Histogram<long> RequestGenerationTokens { get; }
    /// <summary>vLLM's <c>request_success_total</c>: finished choices by <c>finish_reason</c> (stop, length).</summary>
    public Counter<long> RequestSuccess { get; }

    public GridTelemetry(IMeterFactory meters, ServingEngine engine)
    {
        _meter = meters.Create(Name);
        Requests = _meter.CreateCounter<long>("grid_requests", description: "HTTP API requests by endpoint and status code");
        // Observable: exported (as 0) from the first scrape, not only after the first 429.
        _meter.CreateObservableCounter("grid_requests_rejected", () => Interlocked.Read(ref _rejected), description: "Requests refused with 429: the waiting queue was full or the request waited past Grid:Scheduler:MaxQueueSeconds");
        PromptTokens = _meter.CreateCounter<long>("grid_prompt_tokens", description: "Prompt tokens of accepted requests");
        GenerationTokens = _meter.CreateCounter<long>("grid_generation_tokens", description: "Generated tokens");
        TimeToFirstToken = _meter.CreateHistogram("grid_time_to_first_token_seconds", null, "Time from request arrival to a choice's first token", null, Buckets);
        InterTokenLatency = _meter.CreateHistogram("grid_inter_token_latency_seconds", null, "Time between consecutive tokens of a choice", null, Buckets);
        RequestDuration = _meter.CreateHistogram("grid_request_duration_seconds", null, "Generation request duration", null, Buckets);
        RequestQueueTime = _meter.CreateHistogram("grid_request_queue_time_seconds", null, "Time a request waited in the queue before its first admission to the running batch", null, RequestBuckets);
        RequestPrefillTime = _meter.CreateHistogram("grid_request_prefill_time_seconds", null, "Time from a request's first admission to its first token (prefill)", null, RequestBuckets);
        EndToEndLatency = _meter.CreateHistogram("grid_e2e_request_latency_seconds", null, "Time from a request's arrival until its last choice finished", null, RequestBuckets);
        RequestPromptTokens = _meter.CreateHistogram("grid_request_prompt_tokens", null, "Prompt tokens per finished request", null, TokenBuckets);
        RequestGenerationTokens = _meter.CreateHistogram("grid_request_generation_tokens", null, "Generated tokens per finished request (all choices)", null, TokenBuckets);
        RequestSuccess = _meter.CreateCounter<long>("grid_request_success", description: "Choices that finished, by finish_reason (stop, length)");
        _meter.CreateObservableGauge("grid_latent_cache_tokens", () => engine.CacheStats.Tokens, description: "Tokens held in the MLA latent cache");
        _meter.CreateObservableGauge("grid_latent_cache_bytes", () => engine.CacheStats.BytesInUse, description: "Bytes of latent cache in use");
        _meter.CreateObservableGauge("grid_latent_cache_usage_ratio", () => engine.CacheStats.UsageRatio, description: "Latent-cache blocks in use over the budget, every attention host counted once (vLLM's kv_cache_usage_perc), 0..1");
        _meter.CreateObservableGauge("grid_latent_cache_budget_bytes", () => engine.CacheStats.BytesBudget, unit: "By", description: "Latent-cache budget of the attention hosts (Grid:Silo:CacheMaxBytes or from Grid:Silo:MemoryUtilization)");
        _meter.CreateObservableGauge("grid_latent_cache_sequences", () => engine.CacheStats.Sequences, description: "Sequences holding latent cache");
        _meter.CreateObservableGauge("grid_running_sequences", () => engine.Loop?.RunningCount ?? 0, description: "Sequences in the running batch");
        _meter.CreateObservableGauge("grid_waiting_sequences", () => engine.Loop?.WaitingCount ?? 0, description: "Sequences waiting for room in the batch");
        _meter.CreateObservableCounter("grid_preemptions", () => engine.Loop?.Preemptions ?? 0, description: "Sequences preempted for latent-cache room (recomputed later)");
        _meter.CreateObservableCounter("grid_recomputed_sequences", () => engine.Loop?.Recomputed ?? 0, description: "Sequences whose latent caches were lost (a silo died, a lease expired) and were rebuilt by prefilling their tokens again");
        _meter.CreateObservableCounter("grid_engine_loop_restarts", () => engine.Loop?.LoopRestarts ?? 0, description: "Times the engine loop threw and was started again, failing its sequences (0 unless there is a bug)");
        _meter.CreateObservableCounter("grid_step_interruptions", () => engine.Loop?.Interruptions ?? 0, description: "Steps interrupted by a lost silo and stepped again");
        // Prefix caching, as vLLM names it (prefix_cache_queries / prefix_cache_hits, in tokens): hit rate = rate(hits) / rate(queries).
        _meter.CreateObservableCounter("grid_prefix_cache_queries", () => engine.Loop?.PrefixQueries ?? 0, description: "Tokens of new and recomputed sequences looked up in the prefix cache");
        _meter.CreateObservableCounter("grid_prefix_cache_hits", () => engine.Loop?.PrefixHits ?? 0, description: "Tokens found in the prefix cache (reused, not computed)");
        _meter.CreateObservableGauge("grid_prefix_cache_hit_ratio", () => engine.Loop is { PrefixQueries: > 0 } l ? (double)l.PrefixHits / l.PrefixQueries : 0,
            description: "Prefix-cache hits over queries since the gateway started, 0..1 (for a recent rate graph rate(grid_prefix_cache_hits_total) / rate(grid_prefix_cache_queries_total))");
        _meter.CreateObservableGauge("grid_model_ready", () => engine.Ready ? 1 : 0, description: "1 once the model's weights are loaded");
    }

    public void Dispose() => _meter.Dispose();
}
