using OpenTelemetry.Resources;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Grid.Gateway.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace Grid.Gateway.Hosting;

/// <summary>Builds the gateway: configuration, the serving engine, telemetry, the OpenAI-compatible routes.</summary>
public static class GridServer
{
    /// <summary>
    /// The gateway's configuration, lowest to highest precedence: appsettings.json (next to the executable), environment
    /// variables (<c>Grid__Model__Path</c>), then <paramref name="overrides"/> (command-line flags, tests). <c>grid
    /// serve</c> and <c>grid generate</c> both start here, so they read the same sources and keys.
    /// </summary>
    public static WebApplicationBuilder CreateBuilder(IReadOnlyDictionary<string, string?> overrides)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Configuration.AddInMemoryCollection(overrides);
        return builder;
    }

    /// <summary>Builds <c>grid serve</c> from <see cref="CreateBuilder"/>'s configuration.</summary>
    /// <exception cref="GridConfigurationException">Bad <c>Grid:*</c> configuration.</exception>
    public static WebApplication Build(IReadOnlyDictionary<string, string?> overrides, Action<ILoggingBuilder>? logging = null)
    {
        var builder = CreateBuilder(overrides);
        builder.Services.AddGridOptions(builder.Configuration, GridExecutable.Serve);
        var options = GridOptionsSetup.Load(builder.Configuration, GridExecutable.Serve);
        if (options.Logging.Json) builder.Logging.ClearProviders().AddJsonConsole();
        logging?.Invoke(builder.Logging);
        // Draining: running streams get Grid:Http:DrainSeconds to finish after SIGTERM (DrainBeforeStop, port still open).
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(options.Http.DrainSeconds + 5));
        builder.WebHost.ConfigureKestrel(k =>
        {
            var host = options.Http.Host;
            k.Listen(host is "localhost" ? IPAddress.Loopback : IPAddress.Parse(host), options.Http.Port);
            k.Limits.MaxRequestBodySize = options.Http.MaxRequestBodyBytes;
            k.AddServerHeader = false;
        });
        builder.Services.AddSingleton<ServingEngine>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ServingEngine>());
        builder.Services.AddHostedService<DrainBeforeStop>();   // drains with the listener open (before Kestrel stops)
        builder.Services.AddSingleton<GridTelemetry>();
        GatewayHealth.Add(builder.Services);
        // Metrics on /metrics (Prometheus text); OTLP export of metrics and traces when OTEL_EXPORTER_OTLP_ENDPOINT is set.
        // Grid.Silo carries the embedded silo's instruments (latent cache, expert work) when the gateway co-hosts one.
        bool otlp = !string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("grid-gateway"))
            .WithMetrics(m =>
            {
                m.AddMeter(GridTelemetry.Name, "Grid.Orchestrator", Grid.Grains.Hosting.SiloTelemetry.Name, "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel")
                    .AddPrometheusExporter(p => p.ScrapeResponseCacheDurationMilliseconds = 0);
                if (otlp) m.AddOtlpExporter();
            })
            .WithTracing(t =>
            {
                // One trace per request (ApiContext), step spans linked to it (EngineLoop), the steps' grain calls
                // beneath them (Orleans activity propagation, on the client and on every silo).
                t.AddSource(GridTelemetry.Name, "Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application");
                if (otlp) t.AddOtlpExporter();
            });

        var app = builder.Build();
        app.Services.GetRequiredService<GridTelemetry>();   // the gauges exist from the start
        app.Use(OpenAiStatusPagesAsync);
        // Keys from Grid:Http:ApiKeys (appsettings, Grid__Http__ApiKeys__0, --api-key), Grid:Http:ApiKeysFile and GRID_API_KEY.
        var keys = options.Http.ResolveApiKeys(builder.Configuration[ApiKeyEnvironmentVariable]);
        if (keys.Count > 0) app.Use(ApiKeyCheck(keys));
        app.MapPost("/v1/completions", CompletionsEndpoint.HandleAsync);
        app.MapPost("/v1/chat/completions", ChatEndpoint.HandleAsync);
        app.MapPost("/tokenize", TokenizerEndpoints.TokenizeAsync);
        app.MapPost("/detokenize", TokenizerEndpoints.DetokenizeAsync);
        SystemEndpoints.Map(app, options);
        if (options.Cluster.Dashboard) GatewayDashboard.Map(app);
        app.MapPrometheusScrapingEndpoint("/metrics");
        return app;
    }

    /// <summary>The addresses Kestrel bound (after StartAsync), e.g. http://127.0.0.1:41234.</summary>
    public static IReadOnlyList<string> Addresses(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.ToList() ?? [];

    /// <summary>Unknown routes (404) and wrong methods (405) answer in OpenAI's error JSON too.</summary>
    static async Task OpenAiStatusPagesAsync(HttpContext context, RequestDelegate next)
    {
        await next(context);
        var status = context.Response.StatusCode;
        if (context.Response.HasStarted || context.Response.ContentLength is not null || status is not (404 or 405)) return;
        var message = status == 404
            ? $"Unknown route: {context.Request.Method} {context.Request.Path}"
            : $"Method {context.Request.Method} is not allowed for {context.Request.Path}";
        await OpenAiErrors.WriteAsync(context, new ApiException(status, message, null, status == 404 ? "unknown_url" : "method_not_allowed"), CancellationToken.None);
    }

    /// <summary>An API key in the environment (as vLLM's <c>VLLM_API_KEY</c>), e.g. from a Kubernetes Secret.</summary>
    public const string ApiKeyEnvironmentVariable = "GRID_API_KEY";

    /// <summary>The probes Kubernetes (or a load balancer) calls without credentials.</summary>
    static bool IsProbe(PathString path) => path.Equals("/health", StringComparison.OrdinalIgnoreCase) || path.Equals("/ready", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// With API keys configured, every route but the probes (<c>/health</c>, <c>/ready</c>) needs <c>Authorization:
    /// Bearer &lt;key&gt;</c>: <c>/v1/*</c>, <c>/metrics</c>, <c>/debug/*</c>, and unknown routes too (401 before 404, so
    /// that a client without the key learns nothing about the routes).
    /// </summary>
    static Func<HttpContext, RequestDelegate, Task> ApiKeyCheck(IReadOnlyList<string> keys)
    {
        var hashes = keys.Select(k => SHA256.HashData(Encoding.UTF8.GetBytes(k))).ToArray();
        return async (context, next) =>
        {
            if (!IsProbe(context.Request.Path))
            {
                var header = context.Request.Headers.Authorization.ToString();
                const string bearer = "Bearer ";
                var given = header.StartsWith(bearer, StringComparison.OrdinalIgnoreCase) ? header[bearer.Length..].Trim() : null;
                var hash = given is null ? null : SHA256.HashData(Encoding.UTF8.GetBytes(given));
                if (hash is null || !hashes.Any(h => CryptographicOperations.FixedTimeEquals(h, hash)))
                {
                    var message = given is null
                        ? "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
                        : "Incorrect API key provided.";
                    await OpenAiErrors.WriteAsync(context, new ApiException(401, message, null, "invalid_api_key"), CancellationToken.None);
                    return;
                }
            }
            await next(context);
        };
    }
}
