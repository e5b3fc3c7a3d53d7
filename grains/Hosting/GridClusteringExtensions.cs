using System.Net;
using Grid.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Clustering.Redis;
using Orleans.Configuration;
using StackExchange.Redis;

namespace Grid.Grains.Hosting;

public static class GridClusteringExtensions
{
    /// <summary>Membership, ids and endpoints for a silo.</summary>
    public static ISiloBuilder UseGridClustering(this ISiloBuilder silo, GridClusterOptions o)
    {
        int siloPort = o.SiloPort > 0 ? o.SiloPort : GridClusterOptions.FreePort();
        int gatewayPort = o.IsEmbedded ? 0 : o.GatewayPort > 0 ? o.GatewayPort : GridClusterOptions.FreePort();
        silo.Configure<ClusterOptions>(c => { c.ClusterId = o.ClusterId; c.ServiceId = o.ServiceId; });
        silo.Configure<ClusterMembershipOptions>(m => ConfigureMembership(m, o));
        if (!o.IsEmbedded)
        {
            // A silo process of a cluster: say why it stops when the cluster votes it dead before it ever joined.
            silo.Services.AddSingleton(sp => new JoinAwareFatalErrorHandler(o, sp.GetRequiredService<ILogger<JoinAwareFatalErrorHandler>>()));
            silo.Services.AddSingleton<IFatalErrorHandler>(sp => sp.GetRequiredService<JoinAwareFatalErrorHandler>());
            silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => sp.GetRequiredService<JoinAwareFatalErrorHandler>());
        }
        if (o.IsRedis)
        {
            silo.UseRedisClustering(r => r.ConfigurationOptions = RedisConfiguration(o));
            if (o.MembershipStoreCheckSeconds > 0)
                silo.Services.AddHostedService(sp =>
                {
                    var redis = sp.GetRequiredService<IOptions<RedisClusteringOptions>>().Value;
                    var table = redis.CreateRedisKey(sp.GetRequiredService<IOptions<ClusterOptions>>().Value);
                    return new MembershipStoreGuard(redis.ConfigurationOptions!, table, sp.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToString(),
                        TimeSpan.FromSeconds(o.MembershipStoreCheckSeconds), sp.GetRequiredService<ILogger<MembershipStoreGuard>>());
                });
        }
        else if (o.IsEmbedded)
            silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Loopback, siloPort));
        else
            silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Parse(o.AdvertisedAddress), o.PrimarySiloPort));
        if (o.Tls.IsEnabled && !o.IsEmbedded)
        {
            var tls = ClusterTls.Load(o.Tls);
            silo.UseTls(t => tls.Configure(t));
        }
        silo.Configure<EndpointOptions>(e =>
        {
            e.AdvertisedIPAddress = IPAddress.Parse(o.AdvertisedAddress);
            e.SiloPort = siloPort;
            e.GatewayPort = gatewayPort;
            e.SiloListeningEndpoint = new IPEndPoint(IPAddress.Any, siloPort);
            if (gatewayPort > 0) e.GatewayListeningEndpoint = new IPEndPoint(IPAddress.Any, gatewayPort);
        });
        return silo;
    }

    /// <summary>Membership and ids for an external client (the gateway of a multi-process cluster).</summary>
    public static IClientBuilder UseGridClustering(this IClientBuilder client, GridClusterOptions o)
    {
        client.Configure<ClusterOptions>(c => { c.ClusterId = o.ClusterId; c.ServiceId = o.ServiceId; });
        // Re-read the live gateways often, so a dead silo stops being used as a gateway within seconds.
        client.Configure<GatewayOptions>(g => g.GatewayListRefreshPeriod = TimeSpan.FromSeconds(o.GatewayListRefreshSeconds));
        if (o.IsRedis)
            client.UseRedisClustering(r => r.ConfigurationOptions = RedisConfiguration(o));
        else
            client.UseStaticClustering(o.GatewayPorts.Select(p => new IPEndPoint(IPAddress.Parse(o.AdvertisedAddress), p)).ToArray());
        if (o.Tls.IsEnabled)
        {
            var tls = ClusterTls.Load(o.Tls);
            client.UseTls(t => tls.Configure(t));
        }
        return client;
    }

    /// <summary>The Redis membership store's connection: <c>Grid:Cluster:Redis</c>, with <c>Grid:Cluster:RedisPassword</c> when set.</summary>
    public static ConfigurationOptions RedisConfiguration(GridClusterOptions o)
    {
        var options = ConfigurationOptions.Parse(o.Redis);
        if (!string.IsNullOrEmpty(o.RedisPassword)) options.Password = o.RedisPassword;
        return options;
    }

    /// <summary>
    /// Failure detection: a silo probes its peers every <c>ProbeTimeoutSeconds</c> (adaptive, up to four times it,
    /// lengthened when the prober itself is degraded); <c>MissedProbesLimit</c> misses in a row (the last
    /// one through another silo) make it vote, and <c>DeathVotes</c> votes declare the peer dead, gossiped at once.
    /// A peer whose connection carried messages recently is not voted against (Orleans' connection liveness check),
    /// so silos busy with inference are not declared dead.
    /// </summary>
    static void ConfigureMembership(ClusterMembershipOptions m, GridClusterOptions o)
    {
        m.ProbeTimeout = TimeSpan.FromSeconds(o.ProbeTimeoutSeconds);
        // Not below the configured value (Orleans' default floor is half of it): probes of an idle cluster answer in
        // milliseconds and would shrink the timeout to the floor, and the first probe after all cores got busy with
        // inference then missed. A killed silo refuses connections at once, so its detection does not wait on this.
        m.MinProbeTimeout = TimeSpan.FromSeconds(o.ProbeTimeoutSeconds);
        m.MaxProbeTimeout = TimeSpan.FromSeconds(o.ProbeTimeoutSeconds * 4);
        m.NumMissedProbesLimit = o.MissedProbesLimit;
        m.NumVotesForDeathDeclaration = o.DeathVotes;
        m.TableRefreshTimeout = TimeSpan.FromSeconds(o.TableRefreshSeconds);
        m.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(o.IAmAliveSeconds);
        m.MaxJoinAttemptTime = TimeSpan.FromSeconds(o.MaxJoinSeconds);
        // What keeps a busy silo alive with probes this short (Orleans' defaults, stated so they stay on).
        m.EnableIndirectProbes = true;
        m.ExtendProbeTimeoutDuringDegradation = true;
        m.EnableConnectionLivenessCheck = true;
    }
}
