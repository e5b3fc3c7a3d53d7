using System.Net;
using Grid.Configuration;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;

namespace Grid.Grains.Hosting;

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
