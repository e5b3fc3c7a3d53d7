using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;

namespace Grid.Grains.Hosting;

/// <summary>How silos and the gateway find each other, and the deployment's shape (config <c>Grid:Cluster:*</c>).</summary>
public sealed class GridClusterOptions
{
    /// <summary>"embedded" (the gateway co-hosts one silo), "localhost" (development membership on loopback) or "redis".</summary>
    public string Clustering { get; set; } = "embedded";
    /// <summary>Redis connection string for membership (Clustering = redis).</summary>
    public string Redis { get; set; } = "127.0.0.1:6379";
    public string ClusterId { get; set; } = "grid";
    public string ServiceId { get; set; } = "grid";
    public string AdvertisedAddress { get; set; } = "127.0.0.1";
    /// <summary>Silo-to-silo port (0 = pick a free one).</summary>
    public int SiloPort { get; set; }
    /// <summary>Client gateway port of a silo (0 = pick a free one).</summary>
    public int GatewayPort { get; set; }
    /// <summary>Primary silo's silo port for "localhost" development clustering.</summary>
    public int PrimarySiloPort { get; set; } = 11111;
    /// <summary>Client gateway ports for "localhost" clustering (the gateway as an external client).</summary>
    public int[] GatewayPorts { get; set; } = [30000];
    public int AttentionShards { get; set; } = 1;
    public int ExpertGroups { get; set; } = 1;
    /// <summary>Device-limited routing: most expert groups a token may reach (0 = off).</summary>
    public int MaxGroupsPerToken { get; set; }
    /// <summary>Orchestrator deadline per grain call, seconds.</summary>
    public double CallTimeoutSeconds { get; set; } = 20;

    public static GridClusterOptions From(IConfiguration configuration) =>
        configuration.GetSection("Grid:Cluster").Get<GridClusterOptions>() ?? new GridClusterOptions();

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public bool IsEmbedded => string.Equals(Clustering, "embedded", StringComparison.OrdinalIgnoreCase);
    public bool IsRedis => string.Equals(Clustering, "redis", StringComparison.OrdinalIgnoreCase);
}

public static class GridClusteringExtensions
{
    /// <summary>Membership, ids and endpoints for a silo.</summary>
    public static ISiloBuilder UseGridClustering(this ISiloBuilder silo, GridClusterOptions o)
    {
        int siloPort = o.SiloPort > 0 ? o.SiloPort : GridClusterOptions.FreePort();
        int gatewayPort = o.IsEmbedded ? 0 : o.GatewayPort > 0 ? o.GatewayPort : GridClusterOptions.FreePort();
        silo.Configure<ClusterOptions>(c => { c.ClusterId = o.ClusterId; c.ServiceId = o.ServiceId; });
        if (o.IsRedis)
            silo.UseRedisClustering(o.Redis);
        else if (o.IsEmbedded)
            silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Loopback, siloPort));
        else
            silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Parse(o.AdvertisedAddress), o.PrimarySiloPort));
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
        if (o.IsRedis)
            client.UseRedisClustering(o.Redis);
        else
            client.UseStaticClustering(o.GatewayPorts.Select(p => new IPEndPoint(IPAddress.Parse(o.AdvertisedAddress), p)).ToArray());
        return client;
    }
}
