using System.Collections.Concurrent;
using System.Net;
using Grid.Grains.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// Probes polled by Kubernetes while a process loads or drains: the health-check service's per-probe Error lines are
/// muted and one line is written per status change (<see cref="HealthTransitionLog"/>, as the gateway and silos wire it).
/// A real Kestrel server and HTTP client; the log sink keeps every line it gets.
/// </summary>
public sealed class ProbeLogTests
{
    sealed class Flip : IHealthCheck
    {
        public volatile bool Healthy;
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(Healthy ? HealthCheckResult.Healthy("loaded") : HealthCheckResult.Unhealthy("the model is still loading"));
    }

    sealed class Sink : ILoggerProvider
    {
        public readonly ConcurrentQueue<(string Category, LogLevel Level, string Text)> Lines = new();
        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);
        public void Dispose() { }

        sealed class Logger(Sink sink, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                sink.Lines.Enqueue((category, logLevel, formatter(state, exception)));
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task UnhealthyPollsLogOncePerChange(bool quiet)
    {
        var flip = new Flip();
        var sink = new Sink();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders().AddProvider(sink).SetMinimumLevel(LogLevel.Debug);
        if (quiet) HealthTransitionLog.Add(builder.Services);
        else builder.Services.AddSingleton<HealthTransitionLog>();
        builder.Services.AddHealthChecks().AddCheck("model", flip);
        await using var app = builder.Build();
        app.MapHealthChecks("/ready", new HealthCheckOptions
        {
            ResponseWriter = (context, report) =>
            {
                context.RequestServices.GetRequiredService<HealthTransitionLog>().Observe("/ready", report);
                return Task.CompletedTask;
            },
        });
        await app.StartAsync();
        try
        {
            var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            using var http = new HttpClient { BaseAddress = new Uri(address) };
            async Task PollAsync(int times, HttpStatusCode expected)
            {
                for (int i = 0; i < times; i++) Assert.Equal(expected, (await http.GetAsync("/ready")).StatusCode);
            }
            await PollAsync(10, HttpStatusCode.ServiceUnavailable);   // loading
            flip.Healthy = true;
            await PollAsync(5, HttpStatusCode.OK);
            flip.Healthy = false;                                      // draining
            await PollAsync(4, HttpStatusCode.ServiceUnavailable);
        }
        finally { await app.StopAsync(); }

        var transitions = sink.Lines.Where(l => l.Category == typeof(HealthTransitionLog).FullName).ToList();
        Assert.Equal(3, transitions.Count);
        Assert.Equal([LogLevel.Warning, LogLevel.Information, LogLevel.Warning], transitions.Select(t => t.Level));
        Assert.Contains("Probe /ready is now Unhealthy: model: the model is still loading", transitions[0].Text);
        Assert.Contains("Probe /ready is now Healthy", transitions[1].Text);
        var serviceErrors = sink.Lines.Count(l => l.Category == HealthTransitionLog.HealthCheckServiceCategory && l.Level >= LogLevel.Error);
        // Unmuted, the service writes an Error line for each of the 14 unhealthy polls; muted, none.
        Assert.Equal(quiet ? 0 : 14, serviceErrors);
    }
}
