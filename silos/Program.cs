using System.Net;
using Grid.Configuration;
using Grid.Grains.Hosting;
using Grid.Silos;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

// grid-silo: one Grid host. It serves the expert groups and/or attention work its configuration names,
// loads only those tensors, joins the cluster and logs "ready" once its weights are loaded.
// Configuration: the Grid:* tree (docs/configuration.md) from grid-silo.json, then environment variables
// (Grid__Silo__ExpertGroups=0,1), then flags (GridFlags: --model DIR --groups 0,1 --expert-groups 4 --attention true
// --clustering redis --redis HOST:PORT --silo-port N --gateway-port N --dtype float32 ...).
// With Grid:Silo:MetricsPort set, Kestrel on MetricsHost:MetricsPort answers /metrics (Prometheus text), /health
// (liveness) and /ready (readiness: an Active cluster member with its model part loaded).
GridOptions grid;
IHostApplicationBuilder builder;
try
{
    var plain = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
    grid = Configure(plain);
    if (grid.Silo.MetricsPort > 0)
    {
        // Same sources, read again by a web host (the port is only known once the configuration is read).
        var web = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        grid = Configure(web);
        builder = web;
    }
    else builder = plain;
}
catch (Exception e) when (e is GridConfigurationException or ArgumentException or FormatException)
{
    Console.Error.WriteLine("error: " + e.Message);
    return 2;
}
var cluster = grid.Cluster;
builder.Logging.ClearProviders();
if (grid.Logging.Json) builder.Logging.AddJsonConsole();
else builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
builder.UseOrleans(silo => silo.UseGridClustering(cluster).AddGridSilo(grid));
// Metrics: Prometheus text on http://MetricsHost:MetricsPort/metrics when Grid:Silo:MetricsPort is set; OTLP (metrics
// and traces) when OTEL_EXPORTER_OTLP_ENDPOINT is set. A silo records only spans whose parent was sampled (a grain
// call from a traced gateway step): its own background calls start no traces.
var otlp = !string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]);
builder.Services.AddOpenTelemetry()
    .ConfigureResource(r => r.AddService("grid-silo", serviceInstanceId: $"{cluster.AdvertisedAddress}:{cluster.SiloPort}"))
    .WithMetrics(m =>
    {
        m.AddMeter(SiloTelemetry.Name, "Microsoft.Orleans");
        if (grid.Silo.MetricsPort > 0) m.AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0);
        if (otlp) m.AddOtlpExporter();
    })
    .WithTracing(t =>
    {
        t.SetSampler(new ParentBasedSampler(new AlwaysOffSampler()));
        t.AddSource("Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application");
        if (otlp) t.AddOtlpExporter();
    });
builder.Services.AddHostedService<ReadyReporter>();
IHost host;
try
{
    if (builder is WebApplicationBuilder webBuilder)
    {
        webBuilder.WebHost.ConfigureKestrel(k =>
        {
            var address = grid.Silo.MetricsHost;
            if (address is "localhost") k.ListenLocalhost(grid.Silo.MetricsPort);
            else if (IPAddress.TryParse(address, out var ip)) k.Listen(ip, grid.Silo.MetricsPort);
            else k.ListenAnyIP(grid.Silo.MetricsPort);
            k.AddServerHeader = false;
        });
        SiloHealth.Add(webBuilder.Services);
        var app = webBuilder.Build();
        app.MapPrometheusScrapingEndpoint("/metrics");
        SiloHealth.Map(app);
        host = app;
    }
    else host = ((HostApplicationBuilder)builder).Build();
}
catch (GridConfigurationException e)
{
    Console.Error.WriteLine("error: " + e.Message);
    return 2;
}
host.Services.GetRequiredService<SiloTelemetry>();   // the gauges exist from the start, not from the first grain call
try
{
    await host.StartAsync();
}
catch (Exception e) when (e is not OperationCanceledException)
{
    // Membership store refused or unreachable, or the cluster's silos did not answer (TLS): one clear line, exit 1.
    Console.Error.WriteLine("error: silo did not start: " + SiloStartFailure.Describe(e, cluster));
    (host as IDisposable)?.Dispose();
    return 1;
}
await host.WaitForShutdownAsync();
(host as IDisposable)?.Dispose();
return 0;

// grid-silo.json (not appsettings.json, which is the gateway's: both land in folders that reference both projects),
// then Grid__* environment variables, then flags. Bound and validated now: membership, ports and the silo's metadata
// are set up from it before the host is built.
GridOptions Configure(IHostApplicationBuilder b)
{
    b.Configuration.Sources.Insert(0, new Microsoft.Extensions.Configuration.Json.JsonConfigurationSource
    {
        Path = "grid-silo.json", Optional = true, ReloadOnChange = false,
        FileProvider = new Microsoft.Extensions.FileProviders.PhysicalFileProvider(AppContext.BaseDirectory),
    });
    b.Configuration.AddCommandLine(GridFlags.ExpandSwitches(args, GridExecutable.Silo), GridFlags.SwitchMappings(GridExecutable.Silo));
    b.Services.AddGridOptions(b.Configuration, GridExecutable.Silo);
    return GridOptionsSetup.Load(b.Configuration, GridExecutable.Silo);
}

/// <summary>Logs one "ready" line once this silo's model part is loaded (deploy/local/cluster.sh waits for it).</summary>
sealed class ReadyReporter(ModelHost model, ILogger<ReadyReporter> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await model.ModelAsync(stoppingToken);
            logger.LogInformation("silo ready: {Detail}", model.Detail);
        }
        catch (OperationCanceledException) { }
        catch (Exception e)
        {
            logger.LogCritical("silo failed to load its model part: {Error}", e.Message);
        }
    }
}
