using Grid.Configuration;
using Grid.Grains.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Orleans.Configuration;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary>The <c>Grid:Cluster</c> failure-detection keys reach Orleans' options on silos and on the gateway's client.</summary>
public sealed class MembershipOptionsTests
{
    static readonly GridClusterOptions Options = new()
    {
        Clustering = "redis",
        Redis = "127.0.0.1:1",
        ProbeTimeoutSeconds = 1.5,
        MissedProbesLimit = 4,
        DeathVotes = 1,
        TableRefreshSeconds = 7,
        IAmAliveSeconds = 3,
        GatewayListRefreshSeconds = 2.5,
        SiloPort = 1,
        GatewayPort = 2,
    };

    [Fact]
    public void SiloMembershipOptionsComeFromTheGridClusterKeys()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.UseOrleans(s => s.UseGridClustering(Options));
        using var host = builder.Build();   // built, never started: nothing connects
        var m = host.Services.GetRequiredService<IOptions<ClusterMembershipOptions>>().Value;
        Assert.Equal(TimeSpan.FromSeconds(1.5), m.ProbeTimeout);
        Assert.Equal(TimeSpan.FromSeconds(1.5), m.MinProbeTimeout);
        Assert.Equal(TimeSpan.FromSeconds(6), m.MaxProbeTimeout);
        Assert.Equal(4, m.NumMissedProbesLimit);
        Assert.Equal(1, m.NumVotesForDeathDeclaration);
        Assert.Equal(TimeSpan.FromSeconds(7), m.TableRefreshTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), m.IAmAliveTablePublishTimeout);
        Assert.True(m.EnableConnectionLivenessCheck);
        // Redis membership: the store guard runs on every silo.
        Assert.Contains(host.Services.GetServices<IHostedService>(), s => s is MembershipStoreGuard);
    }

    [Fact]
    public void TheGatewayClientRefreshesItsGatewayListFromTheGridClusterKeys()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.UseOrleansClient(c => c.UseGridClustering(Options));
        using var host = builder.Build();
        Assert.Equal(TimeSpan.FromSeconds(2.5), host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.GatewayListRefreshPeriod);
    }

    [Fact]
    public void NoStoreGuardWhenTurnedOff()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.UseOrleans(s => s.UseGridClustering(new GridClusterOptions { Clustering = "redis", MembershipStoreCheckSeconds = 0, SiloPort = 1, GatewayPort = 2 }));
        using var host = builder.Build();
        Assert.DoesNotContain(host.Services.GetServices<IHostedService>(), s => s is MembershipStoreGuard);
    }
}
