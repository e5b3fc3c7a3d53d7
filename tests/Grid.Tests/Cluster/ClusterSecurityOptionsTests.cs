using Grid.Configuration;
using Grid.Grains.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Orleans.Clustering.Redis;
using Orleans.Configuration;
using Orleans.Connections.Security;
using Xunit;

namespace Grid.Tests.Cluster;

/// <summary><c>Grid:Cluster:Tls:*</c> and <c>Grid:Cluster:RedisPassword</c>: validation with clear messages, and what reaches Orleans.</summary>
public sealed class ClusterSecurityOptionsTests
{
    static readonly string Pki = ModelTestKit.TempDir("tls-options");
    static readonly TestCertificates Ca = new(Path.Combine(Pki, "ca"), "options-ca");
    static readonly TestCertificates Other = new(Path.Combine(Pki, "other"), "other-ca");

    static GridOptions Load(GridExecutable executable, params (string Key, string? Value)[] settings) =>
        GridOptionsSetup.Load(new ConfigurationBuilder().AddInMemoryCollection(
            settings.Append(("Grid:Model:Path", Golden.Dir("full_f32"))).ToDictionary(s => s.Item1, s => s.Item2)).Build(), executable);

    static (string, string?)[] Tls(string certificate, string? key, string? ca) =>
        [("Grid:Cluster:Clustering", "redis"), ("Grid:Cluster:Tls:CertificatePath", certificate), ("Grid:Cluster:Tls:KeyPath", key), ("Grid:Cluster:Tls:CaPath", ca)];

    [Fact]
    public void ACertificateFromTheClusterCaLoads()
    {
        var (certificate, key) = Ca.Issue("node");
        var o = Load(GridExecutable.Silo, Tls(certificate, key, Ca.CaPath));
        var tls = ClusterTls.Load(o.Cluster.Tls);
        Assert.True(tls.Certificate.HasPrivateKey);
        Assert.Equal("CN=node", tls.Certificate.Subject);
        Assert.True(tls.IsFromClusterCa(tls.Certificate, out _));
        // A certificate of another CA is not a peer.
        var (foreign, foreignKey) = Other.Issue("intruder");
        using var intruder = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(foreign, foreignKey);
        Assert.False(tls.IsFromClusterCa(intruder, out var problem));
        Assert.NotEmpty(problem);
    }

    [Fact]
    public void BadTlsSettingsFailWithTheKey()
    {
        var (certificate, key) = Ca.Issue("node2");
        var (foreign, foreignKey) = Other.Issue("node3");
        Assert.Contains("Grid:Cluster:Tls:CaPath must be set", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, Tls(certificate, key, null))).Message);
        Assert.Contains("Grid:Cluster:Tls:CertificatePath must be set when Grid:Cluster:Tls:CaPath", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Serve, [("Grid:Cluster:Tls:CaPath", Ca.CaPath)])).Message);
        Assert.Contains("has no private key", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, Tls(certificate, null, Ca.CaPath))).Message);
        Assert.Contains($"CN=node3 is not accepted by the cluster CA in '{Ca.CaPath}'", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, Tls(foreign, foreignKey, Ca.CaPath))).Message);
        Assert.Contains("Grid:Cluster:Tls:CertificatePath: cannot load '/nonexistent.crt'", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Serve, Tls("/nonexistent.crt", key, Ca.CaPath))).Message);
        Assert.Contains("Grid:Cluster:MaxJoinSeconds must be positive", Assert.Throws<GridConfigurationException>(() => Load(GridExecutable.Silo, [("Grid:Cluster:MaxJoinSeconds", "0")])).Message);
    }

    [Fact]
    public void TlsAndTheRedisPasswordReachOrleansOnSilosAndClients()
    {
        var (certificate, key) = Ca.Issue("node4");
        var o = Load(GridExecutable.Silo, [.. Tls(certificate, key, Ca.CaPath), ("Grid:Cluster:Redis", "redis.example:6380"), ("Grid:Cluster:RedisPassword", "pw-1"), ("Grid:Cluster:SiloPort", "1"), ("Grid:Cluster:GatewayPort", "2"), ("Grid:Cluster:MaxJoinSeconds", "42")]);
        var silo = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        silo.UseOrleans(s => s.UseGridClustering(o.Cluster));
        using (var host = silo.Build())   // built, never started: nothing connects
        {
            var redis = host.Services.GetRequiredService<IOptions<RedisClusteringOptions>>().Value.ConfigurationOptions!;
            Assert.Equal("pw-1", redis.Password);
            var endpoint = Assert.IsType<System.Net.DnsEndPoint>(redis.EndPoints.Single());
            Assert.Equal(("redis.example", 6380), (endpoint.Host, endpoint.Port));
            Assert.Equal(TimeSpan.FromSeconds(42), host.Services.GetRequiredService<IOptions<ClusterMembershipOptions>>().Value.MaxJoinAttemptTime);
            Assert.IsType<JoinAwareFatalErrorHandler>(host.Services.GetRequiredService<Orleans.Runtime.IFatalErrorHandler>());
        }
        var client = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        client.UseOrleansClient(c => c.UseGridClustering(o.Cluster));
        using (var host = client.Build())
        {
            Assert.Equal("pw-1", host.Services.GetRequiredService<IOptions<RedisClusteringOptions>>().Value.ConfigurationOptions!.Password);
        }
    }

    [Fact]
    public void OrleansTlsRequiresACertificateBothWaysAndAcceptsOnlyTheClusterCa()
    {
        var (certificate, key) = Ca.Issue("node5");
        var tls = ClusterTls.Load(Load(GridExecutable.Silo, Tls(certificate, key, Ca.CaPath)).Cluster.Tls);
        var options = new TlsOptions();
        tls.Configure(options);
        Assert.Equal("CN=node5", options.LocalCertificate!.Subject);
        Assert.Equal(RemoteCertificateMode.RequireCertificate, options.RemoteCertificateMode);
        Assert.Equal(RemoteCertificateMode.RequireCertificate, options.ClientCertificateMode);
        var (peer, peerKey) = Ca.Issue("peer");
        var (foreign, foreignKey) = Other.Issue("stranger");
        using var peerCertificate = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(peer, peerKey);
        using var strangerCertificate = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(foreign, foreignKey);
        // Reached by IP, so the name never matches: the CA decides.
        Assert.True(options.RemoteCertificateValidation!(peerCertificate, null!, System.Net.Security.SslPolicyErrors.RemoteCertificateNameMismatch | System.Net.Security.SslPolicyErrors.RemoteCertificateChainErrors));
        Assert.False(options.RemoteCertificateValidation!(strangerCertificate, null!, System.Net.Security.SslPolicyErrors.RemoteCertificateChainErrors));
    }

    [Fact]
    public void StartFailuresAreDescribedInOneLine()
    {
        var cluster = new GridClusterOptions { Redis = "10.0.0.5:6379", RedisPassword = "x", ClusterId = "c1" };
        var auth = new StackExchange.Redis.RedisConnectionException(StackExchange.Redis.ConnectionFailureType.AuthenticationFailure, "WRONGPASS invalid username-password pair");
        Assert.Equal("the Redis membership store at 10.0.0.5:6379 refused the password (Grid:Cluster:RedisPassword is wrong)",
            SiloStartFailure.Describe(new InvalidOperationException("start failed", auth), cluster));
        Assert.Equal("the Redis membership store at 10.0.0.5:6379 requires a password and none is set (Grid:Cluster:RedisPassword)",
            SiloStartFailure.Describe(auth, new GridClusterOptions { Redis = "10.0.0.5:6379" }));
        Assert.StartsWith("could not join cluster 'c1': ", SiloStartFailure.Describe(new Orleans.Runtime.OrleansException("Failed to join the cluster"), cluster));
    }
}
