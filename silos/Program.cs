using Grid.Grains.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

// grid-silo: one Grid host. It serves the expert groups and/or attention work its configuration names,
// loads only those tensors, joins the cluster and logs "ready" once its weights are loaded.
// Configuration: grid-silo.json, environment (Grid__Silo__ExpertGroups=0,1) and flags
// (--model DIR --groups 0,1 --group-count 4 --attention true --clustering redis --redis HOST:PORT
//  --silo-port N --gateway-port N --dtype float32).
var switches = new Dictionary<string, string>
{
    ["--model"] = "Grid:Model:Path",
    ["--dtype"] = "Grid:Model:Dtype",
    ["--groups"] = "Grid:Silo:ExpertGroups",
    ["--group-count"] = "Grid:Silo:ExpertGroupCount",
    ["--attention"] = "Grid:Silo:Attention",
    ["--clustering"] = "Grid:Cluster:Clustering",
    ["--redis"] = "Grid:Cluster:Redis",
    ["--silo-port"] = "Grid:Cluster:SiloPort",
    ["--gateway-port"] = "Grid:Cluster:GatewayPort",
    ["--primary-port"] = "Grid:Cluster:PrimarySiloPort",
    ["--torch-threads"] = "Grid:Silo:TorchThreads",
    ["--metrics-port"] = "Grid:Silo:MetricsPort",
    ["--device"] = "Grid:Silo:Device",
};
SiloRoleOptions role;
GridClusterOptions cluster;
HostApplicationBuilder builder;
try
{
    // grid-silo.json (not appsettings.json, which is the gateway's: both land in folders that reference both projects),
    // then Grid__* environment variables, then flags.
    builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
    builder.Configuration.Sources.Insert(0, new Microsoft.Extensions.Configuration.Json.JsonConfigurationSource
    {
        Path = "grid-silo.json", Optional = true, ReloadOnChange = false,
        FileProvider = new Microsoft.Extensions.FileProviders.PhysicalFileProvider(AppContext.BaseDirectory),
    });
    builder.Configuration.AddCommandLine(args, switches);
    var c = builder.Configuration;
    role = new SiloRoleOptions
    {
        ModelPath = c["Grid:Model:Path"] ?? "",
        Dtype = c["Grid:Model:Dtype"] ?? "float32",
        Attention = bool.Parse(c["Grid:Silo:Attention"] ?? "false"),
        ExpertGroupCount = int.Parse(c["Grid:Silo:ExpertGroupCount"] ?? "1"),
        ExpertGroups = (c["Grid:Silo:ExpertGroups"] ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray(),
        CacheBlockSize = int.Parse(c["Grid:Silo:CacheBlockSize"] ?? "16"),
        TorchThreads = int.Parse(c["Grid:Silo:TorchThreads"] ?? "0"),
        Device = c["Grid:Silo:Device"] ?? "cpu",
    };
    if (string.IsNullOrEmpty(role.ModelPath) || !Directory.Exists(role.ModelPath))
        throw new ArgumentException($"Grid:Model:Path (--model): '{role.ModelPath}' is not a folder");
    ModelHost.ValidateDevice(role.Device);
    cluster = GridClusterOptions.From(c);
    if (cluster.IsEmbedded) cluster.Clustering = "localhost";
}
catch (Exception e) when (e is ArgumentException or FormatException or InvalidOperationException)
{
    Console.Error.WriteLine("error: " + e.Message);
    return 2;
}
builder.Logging.ClearProviders();
if (builder.Configuration["Grid:Logging:Json"] == "true") builder.Logging.AddJsonConsole();
else builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
builder.UseOrleans(silo => silo.UseGridClustering(cluster).AddGridSilo(role));
// Metrics: Prometheus text on http://+:MetricsPort/metrics when Grid:Silo:MetricsPort is set; OTLP (metrics and
// traces) when OTEL_EXPORTER_OTLP_ENDPOINT is set.
int metricsPort = int.Parse(builder.Configuration["Grid:Silo:MetricsPort"] ?? "0");
var otlp = !string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]);
builder.Services.AddOpenTelemetry()
    .ConfigureResource(r => r.AddService("grid-silo", serviceInstanceId: $"{cluster.AdvertisedAddress}:{cluster.SiloPort}"))
    .WithMetrics(m =>
    {
        m.AddMeter(SiloTelemetry.Name, "Microsoft.Orleans");
        if (metricsPort > 0) m.AddPrometheusHttpListener(o => { o.Host = builder.Configuration["Grid:Silo:MetricsHost"] ?? "127.0.0.1"; o.Port = metricsPort; o.ScrapeResponseCacheDurationMilliseconds = 0; });
        if (otlp) m.AddOtlpExporter();
    })
    .WithTracing(t =>
    {
        t.AddSource("Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application");
        if (otlp) t.AddOtlpExporter();
    });
builder.Services.AddHostedService<ReadyReporter>();
var host = builder.Build();
await host.RunAsync();
return 0;

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
