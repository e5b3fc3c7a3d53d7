using System.Net;
using System.Net.Http.Json;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using Grid.Tests.Cluster;
using StackExchange.Redis;
using Xunit;
using Xunit.Abstractions;

namespace Grid.Tests.Faults;

/// <summary>
/// One real loopback cluster, shared by the tests of this class: a <c>redis-server --requirepass</c>, three silo
/// processes and a gateway, every Orleans connection TLS with certificates from one test CA (mutual authentication),
/// the Redis password from <c>Grid__Cluster__RedisPassword</c>.
/// </summary>
public sealed class SecureClusterFixture : IAsyncLifetime
{
    public const string RedisPassword = "s3cret-membership-pw";
    public ProcessCluster Cluster { get; private set; } = null!;
    public TestCertificates Ca { get; private set; } = null!;
    public TestCertificates ForeignCa { get; private set; } = null!;
    public GatewayHandle Gateway { get; private set; } = null!;
    readonly List<string> _log = new();
    /// <summary>Progress lines of the fixture (the tests write them to their output).</summary>
    public IReadOnlyList<string> Log => _log;

    public async Task InitializeAsync()
    {
        var pki = ModelTestKit.TempDir("cluster-tls");
        Ca = new TestCertificates(Path.Combine(pki, "cluster"), "grid-test-cluster-ca");
        ForeignCa = new TestCertificates(Path.Combine(pki, "foreign"), "some-other-ca");
        var common = new Dictionary<string, string> { ["Grid__Cluster__RedisPassword"] = RedisPassword };
        Cluster = new ProcessCluster(FaultKit.Model, FaultKit.ExpertGroups, common, line => { lock (_log) _log.Add(line); });
        await Cluster.StartRedisAsync(RedisPassword);
        Cluster.StartSilo("silo0", attention: true, groups: [0, 3], extraEnv: Ca.Environment("silo0"));
        Cluster.StartSilo("silo1", attention: false, groups: [1], extraEnv: Ca.Environment("silo1"));
        Cluster.StartSilo("silo2", attention: false, groups: [2], extraEnv: Ca.Environment("silo2"));
        foreach (var s in new[] { "silo0", "silo1", "silo2" }) await Cluster.WaitSiloReadyAsync(s);
        Gateway = await Cluster.StartGatewayAsync("gateway", attentionShards: 1, Ca.Environment("gateway"));
    }

    public async Task DisposeAsync()
    {
        if (Cluster is not null) await Cluster.DisposeAsync();
    }

    /// <summary>The Orleans status of every membership row (by silo address "S127.0.0.1:port:generation").</summary>
    public async Task<Dictionary<string, int>> MembershipRowsAsync()
    {
        using var redis = await ConnectionMultiplexer.ConnectAsync(new ConfigurationOptions { EndPoints = { Cluster.RedisAddress }, Password = RedisPassword });
        var rows = await redis.GetDatabase().HashGetAllAsync($"grid/members/{Cluster.ClusterId}");
        return rows.Where(r => r.Name != "Version")
            .ToDictionary(r => r.Name.ToString(), r => JsonNode.Parse(r.Value.ToString())!["Status"]!.GetValue<int>());
    }
}

/// <summary>
/// Cluster security on a real loopback cluster: TLS with mutual authentication between silos and from the gateway
/// (a request is served, the silo port speaks TLS with the silo's certificate), silos without a certificate or with one
/// from another CA never become Active members and stop with a clear error, and a silo with the wrong Redis password
/// stops with a clear error.
/// </summary>
[Collection(FaultsCollection.Name)]
public sealed class ClusterSecurityTests(SecureClusterFixture fixture, ITestOutputHelper output) : IClassFixture<SecureClusterFixture>
{
    const int Active = 3;   // Orleans SiloStatus.Active in the Redis membership rows

    ProcessCluster Cluster => fixture.Cluster;

    void WriteLog()
    {
        lock (fixture.Log) foreach (var line in fixture.Log) FaultKit.Log(output, line);
    }

    [Fact]
    public async Task TlsClusterWithRedisPasswordServesGoldenCompletions()
    {
        WriteLog();
        var rows = await fixture.MembershipRowsAsync();
        Assert.Equal(3, rows.Count(r => r.Value == Active));
        foreach (var prompt in new[] { "ids", "long" })
        {
            var expected = Golden.Load("full_f32", prompt);
            var body = new JsonObject
            {
                ["prompt"] = new JsonArray(expected.PromptIds.Select(i => (JsonNode)i).ToArray()),
                ["max_tokens"] = 16,
                ["temperature"] = 0,
                ["ignore_eos"] = true,
                ["logprobs"] = 5,
                ["return_tokens_as_token_ids"] = true,
            };
            using var response = await fixture.Gateway.Http.PostAsJsonAsync("/v1/completions", body);
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, text + "\n" + Cluster.AllLogTails());
            expected.AssertLegacyLogprobs(JsonNode.Parse(text)!["choices"]![0]!["logprobs"]!, prompt);
        }
    }

    [Fact]
    public async Task SiloPortSpeaksTlsWithTheSilosCertificate()
    {
        var (certificate, key) = fixture.Ca.Issue("probe");
        using var clientCertificate = X509Certificate2.CreateFromPemFile(certificate, key);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Cluster.Silo("silo1").SiloPort);
        await using var tls = new SslStream(tcp.GetStream(), false, (_, _, _, _) => true);
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "silo1",
            ClientCertificates = [clientCertificate],
        });
        Assert.True(tls.IsEncrypted && tls.IsMutuallyAuthenticated);
        Assert.Equal("CN=silo1", tls.RemoteCertificate!.Subject);
    }

    [Fact]
    public async Task SiloWithoutCertificateNeverJoins()
    {
        await AssertCannotJoinAsync("plain", new()
        {
            ["Grid__Cluster__Tls__CertificatePath"] = "",
            ["Grid__Cluster__Tls__KeyPath"] = "",
            ["Grid__Cluster__Tls__CaPath"] = "",
        }, "cluster TLS is off here");
    }

    [Fact]
    public async Task SiloWithCertificateFromAnotherCaNeverJoins()
    {
        // Its own CA trusts its certificate (so it starts), but the cluster's CA does not, and it does not trust theirs.
        await AssertCannotJoinAsync("foreign", fixture.ForeignCa.Environment("foreign"), "cluster TLS is on here");
    }

    [Fact]
    public async Task SiloWithWrongRedisPasswordStopsWithClearError()
    {
        Cluster.StartSilo("wrong-password", attention: false, groups: [1], extraEnv: new Dictionary<string, string>(fixture.Ca.Environment("wrong-password"))
        {
            ["Grid__Cluster__RedisPassword"] = "not-the-password",
        });
        int code = await Cluster.WaitForExitAsync("wrong-password");
        var log = Cluster.LogTail("wrong-password", 400);
        output.WriteLine(Cluster.LogTail("wrong-password", 10));
        Assert.Equal(1, code);
        Assert.Contains($"error: silo did not start: the Redis membership store at {Cluster.RedisAddress} refused the password (Grid:Cluster:RedisPassword is wrong)", log);
        Assert.DoesNotContain("not-the-password", log);
    }

    async Task AssertCannotJoinAsync(string name, Dictionary<string, string> env, string hint)
    {
        env["Grid__Cluster__MaxJoinSeconds"] = "20";
        var silo = Cluster.StartSilo(name, attention: false, groups: [1], extraEnv: env);
        string prefix = $"S127.0.0.1:{silo.SiloPort}:";
        // While it tries, and after it gave up: never an Active row; the process stops with a clear error.
        var seen = new HashSet<int>();
        var exit = Cluster.WaitForExitAsync(name);
        while (!exit.IsCompleted)
        {
            foreach (var (row, status) in await fixture.MembershipRowsAsync())
                if (row.StartsWith(prefix, StringComparison.Ordinal)) seen.Add(status);
            await Task.WhenAny(exit, Task.Delay(200));
        }
        int code = await exit;
        foreach (var (row, status) in await fixture.MembershipRowsAsync())
            if (row.StartsWith(prefix, StringComparison.Ordinal)) seen.Add(status);
        output.WriteLine($"{name}: exit {code}, membership statuses seen: [{string.Join(",", seen)}]\n{Cluster.LogTail(name, 15)}");
        Assert.DoesNotContain(Active, seen);
        // Either it gave up joining (exit 1) or the cluster voted it dead first and Orleans stopped it (FailFast: 134).
        Assert.NotEqual(0, code);
        var log = Cluster.LogTail(name, 400);
        Assert.Contains($"error: silo did not start: could not join cluster '{Cluster.ClusterId}'", log);
        Assert.Contains(hint, log);
        // The cluster is unharmed: the three members are Active and the gateway is ready.
        var rows = await fixture.MembershipRowsAsync();
        Assert.Equal(3, rows.Count(r => r.Value == Active));
        using var ready = await fixture.Gateway.Http.GetAsync("/ready");
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
    }
}
