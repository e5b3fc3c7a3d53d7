using Grid.Configuration;
using Grid.Grains.Placement;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace Grid.Grains.Hosting;

public static class GridSiloExtensions
{
    /// <summary>
    /// Makes this silo a Grid host: publishes what it serves as silo metadata, loads that model part at start
    /// (<see cref="ModelHost"/>), and registers the placement director that pins expert-group and attention grains.
    /// Grid grains are never collected while the silo lives (their state is the latent caches).
    /// <paramref name="options"/> is the silo's validated <c>Grid:*</c> tree: <c>Grid:Model</c> (checkpoint, dtype),
    /// <c>Grid:Cluster:ExpertGroups</c> (how the experts are split) and <c>Grid:Silo</c> (what this silo serves).
    /// </summary>
    public static ISiloBuilder AddGridSilo(this ISiloBuilder silo, GridOptions options)
    {
        silo.UseSiloMetadata(SiloMetadataKeys.For(options.Silo));
        // Grain calls carry the caller's trace context (W3C): a gateway step's calls and their work here are one trace.
        silo.AddActivityPropagation();
        // Grid:Cluster:Dashboard: the dashboard's grains and call profiler here, its pages on the gateway.
        if (options.Cluster.Dashboard) Orleans.Dashboard.ServiceCollectionExtensions.AddDashboard(silo);
        silo.Services.AddSingleton(sp => new ModelHost(options, sp.GetRequiredService<ILogger<ModelHost>>(), sp.GetService<Microsoft.Extensions.Hosting.IHostApplicationLifetime>()));
        silo.Services.AddSingleton<SiloTelemetry>();
        silo.Services.AddSingleton(new ShardLease(TimeSpan.FromSeconds(options.Cluster.LeaseSeconds)));
        silo.Services.AddHostedService(sp => sp.GetRequiredService<ModelHost>());
        silo.Services.AddPlacementDirector<ExpertGroupPlacement, GridPlacementDirector>();
        silo.Services.AddPlacementDirector<AttentionPlacement, GridPlacementDirector>();
        silo.Configure<GrainCollectionOptions>(o =>
        {
            o.ClassSpecificCollectionAge[typeof(AttentionGrain).FullName!] = TimeSpan.FromDays(3650);
            o.ClassSpecificCollectionAge[typeof(ExpertGroupGrain).FullName!] = TimeSpan.FromDays(3650);
        });
        silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMinutes(2));
        // The strongly consistent grain directory: with the default one, a silo that dies takes its directory partition
        // with it, and grains registered there are terminated even on the silos that live on (an attention shard on a
        // surviving silo lost every latent cache it held). This one rebuilds the partition from the surviving silos.
#pragma warning disable ORLEANSEXP003 // experimental in Orleans 10.4: chosen for the guarantee above
        silo.AddDistributedGrainDirectory();
#pragma warning restore ORLEANSEXP003
        return silo;
    }
}
