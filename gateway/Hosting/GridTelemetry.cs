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
    public Counter<long> Requests { get; }
    public Counter<long> PromptTokens { get; }
    public Counter<long> GenerationTokens { get; }
    public Histogram<double> TimeToFirstToken { get; }
    public Histogram<double> InterTokenLatency { get; }
    public Histogram<double> RequestDuration { get; }

    public GridTelemetry(IMeterFactory meters, ServingEngine engine)
    {
        _meter = meters.Create(Name);
        Requests = _meter.CreateCounter<long>("grid_requests", description: "HTTP API requests by endpoint and status code");
        PromptTokens = _meter.CreateCounter<long>("grid_prompt_tokens", description: "Prompt tokens of accepted requests");
        GenerationTokens = _meter.CreateCounter<long>("grid_generation_tokens", description: "Generated tokens");
        TimeToFirstToken = _meter.CreateHistogram<double>("grid_time_to_first_token_seconds", description: "Time from request arrival to a choice's first token");
        InterTokenLatency = _meter.CreateHistogram<double>("grid_inter_token_latency_seconds", description: "Time between consecutive tokens of a choice");
        RequestDuration = _meter.CreateHistogram<double>("grid_request_duration_seconds", description: "Generation request duration");
        _meter.CreateObservableGauge("grid_latent_cache_tokens", () => engine.CacheStats.Tokens, description: "Tokens held in the MLA latent cache");
        _meter.CreateObservableGauge("grid_latent_cache_bytes", () => engine.CacheStats.BytesInUse, description: "Bytes of latent cache in use");
        _meter.CreateObservableGauge("grid_latent_cache_sequences", () => engine.CacheStats.Sequences, description: "Sequences holding latent cache");
        _meter.CreateObservableGauge("grid_running_sequences", () => engine.Scheduler?.RunningCount ?? 0, description: "Sequences in the running batch");
        _meter.CreateObservableGauge("grid_waiting_sequences", () => engine.Scheduler?.WaitingCount ?? 0, description: "Sequences waiting for room in the batch");
        _meter.CreateObservableGauge("grid_model_ready", () => engine.Ready ? 1 : 0, description: "1 once the model's weights are loaded");
    }

    public void Dispose() => _meter.Dispose();
}
