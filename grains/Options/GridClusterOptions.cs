using System.Net;
using System.Net.Sockets;

namespace Grid.Configuration;

/// <summary>How silos and the gateway find each other, and the deployment's shape (<c>Grid:Cluster:*</c>).</summary>
public sealed class GridClusterOptions
{
    /// <summary>"embedded" (the gateway co-hosts one silo), "localhost" (development membership on loopback) or "redis".</summary>
    public string Clustering { get; set; } = "embedded";
    /// <summary>Redis connection string for membership (Clustering = redis).</summary>
    public string Redis { get; set; } = "127.0.0.1:6379";
    /// <summary>
    /// Password of the Redis membership store (Redis <c>requirepass</c>/ACL default user); overrides a <c>password=</c>
    /// in <see cref="Redis"/>. Empty: none. Give it from a secret (<c>Grid__Cluster__RedisPassword</c>), not in argv.
    /// </summary>
    public string? RedisPassword { get; set; }
    /// <summary>TLS with mutual authentication on silo-to-silo and gateway-to-silo connections (off unless a certificate is set).</summary>
    public ClusterTlsOptions Tls { get; set; } = new();
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
    /// <summary>Attention shards (silos hosting attention serve them).</summary>
    public int AttentionShards { get; set; } = 1;
    /// <summary>
    /// Into how many contiguous groups the routed experts are split across the deployment: the one key silos (which
    /// partition their experts by it) and the gateway (which routes by it) both read.
    /// </summary>
    public int ExpertGroups { get; set; } = 1;
    /// <summary>Device-limited routing: most expert groups a token may reach (0 = off).</summary>
    public int MaxGroupsPerToken { get; set; }
    /// <summary>
    /// Who carries a MoE layer's hidden states between attention shard and expert groups: "shard" (the default: one
    /// gateway round trip per layer; the shard runs its silo's groups in place and calls the others) or "gateway" (the
    /// gateway calls the groups and hands their sum back: two round trips per layer). Read by the gateway.
    /// </summary>
    public string ExpertExchange { get; set; } = "shard";
    /// <summary>
    /// Element type of hidden states on the wire: "float32" (the default, exact), "float16" or "bfloat16" (half the
    /// bytes; converted at the edges of each call, sums taken in the compute dtype; moves logits slightly). Read by the gateway.
    /// </summary>
    public string WireDtype { get; set; } = "float32";
    /// <summary>
    /// With the shard exchange, how many MoE layers an attention shard walks per gateway call: 0 (the default) walks the
    /// whole step in one call (the shard calls the other silos' groups layer by layer itself, no gateway round trip per
    /// layer); 1 stops at every MoE layer for the gateway's next call (the walk before). Read by the gateway.
    /// </summary>
    public int LayersPerCall { get; set; }
    /// <summary>Orchestrator deadline per grain call, seconds.</summary>
    public double CallTimeoutSeconds { get; set; } = 20;
    /// <summary>
    /// A gateway's lease on its sequences, seconds: the gateway renews it (every call, and every third of it when idle);
    /// an attention shard frees the caches of a gateway not heard from for this long. Silos and gateways read it.
    /// </summary>
    public double LeaseSeconds { get; set; } = 20;
    /// <summary>
    /// How long the gateway keeps retrying a step that a lost silo interrupted (re-placing shards and groups,
    /// recomputing lost caches) before failing its requests with 503, seconds.
    /// </summary>
    public double RecoverySeconds { get; set; } = 60;
    /// Membership probe timeout and period, seconds (Orleans <c>ClusterMembershipOptions.ProbeTimeout</c>; the adaptive
    /// timeout stays between this and four times this). With <see cref="MissedProbesLimit"/> it sets how fast a killed
    /// silo is declared dead.
    /// </summary>
    public double ProbeTimeoutSeconds { get; set; } = 1;
    /// <summary>Missed probes after which a silo votes its peer suspect (<c>NumMissedProbesLimit</c>).</summary>
    public int MissedProbesLimit { get; set; } = 3;
    /// <summary>Suspect votes that declare a silo dead (<c>NumVotesForDeathDeclaration</c>; fewer when fewer silos are alive).</summary>
    public int DeathVotes { get; set; } = 2;
    /// <summary>How often a silo re-reads the membership table, seconds (<c>TableRefreshTimeout</c>; death declarations are also gossiped at once).</summary>
    public double TableRefreshSeconds { get; set; } = 5;
    /// <summary>How often a silo writes its heartbeat into the membership table, seconds (<c>IAmAliveTablePublishTimeout</c>).</summary>
    public double IAmAliveSeconds { get; set; } = 5;
    /// <summary>How often the gateway (an Orleans client) re-reads the list of live silo gateways, seconds (<c>GatewayListRefreshPeriod</c>).</summary>
    public double GatewayListRefreshSeconds { get; set; } = 2;
    /// <summary>
    /// Redis membership: how often each silo checks the membership table is still there, seconds; when Redis comes
    /// back empty the first silo to notice restores the last table it saw and every silo its own row (0 = off).
    /// </summary>
    public double MembershipStoreCheckSeconds { get; set; } = 1;
    /// <summary>
    /// How long a silo keeps trying to join the cluster before it stops with an error, seconds (Orleans
    /// <c>MaxJoinAttemptTime</c>): a silo that cannot reach the others (wrong certificate, a network policy) exits
    /// instead of waiting forever.
    /// </summary>
    public double MaxJoinSeconds { get; set; } = 300;
    /// <summary>
    /// The Orleans Dashboard: every silo runs its grain-call profiler and dashboard grains, and the gateway serves the
    /// dashboard on <c>/dashboard</c> (behind the API key). Set it on silos and gateway alike.
    /// </summary>
    public bool Dashboard { get; set; }

    static readonly HashSet<int> s_portsHandedOut = [];

    /// <summary>A loopback port free now that this process has not handed out before: the kernel may give the same
    /// ephemeral port to two probes in a row once the first is closed, and a silo's ports must differ.</summary>
    public static int FreePort()
    {
        while (true)
        {
            int port;
            using (var l = new TcpListener(IPAddress.Loopback, 0))
            {
                l.Start();
                port = ((IPEndPoint)l.LocalEndpoint).Port;
            }
            lock (s_portsHandedOut)
                if (s_portsHandedOut.Add(port)) return port;
        }
    }

    public bool IsEmbedded => string.Equals(Clustering, "embedded", StringComparison.OrdinalIgnoreCase);
    public bool IsRedis => string.Equals(Clustering, "redis", StringComparison.OrdinalIgnoreCase);
}

/// <summary>
/// <c>Grid:Cluster:Tls:*</c>: TLS on every Orleans connection (silo to silo, gateway to silo) with mutual authentication:
/// each side presents its certificate and accepts the other's only when it chains to the cluster CA
/// (<see cref="CaPath"/>). Host names are not checked (silos connect by IP); the CA is what authenticates.
/// </summary>
public sealed class ClusterTlsOptions
{
    /// <summary>This process's certificate: a PEM file (key in <see cref="KeyPath"/> or in the same file) or a PKCS#12 (.pfx/.p12) file. Empty: TLS off.</summary>
    public string? CertificatePath { get; set; }
    /// <summary>The PEM private key of <see cref="CertificatePath"/> when it is not in the same file (Kubernetes TLS secrets: tls.key).</summary>
    public string? KeyPath { get; set; }
    /// <summary>Password of a PKCS#12 file or of an encrypted PEM key (empty: none).</summary>
    public string? CertificatePassword { get; set; }
    /// <summary>PEM file of the cluster CA certificate(s) a peer's certificate must chain to (several for a rotation).</summary>
    public string? CaPath { get; set; }

    public bool IsEnabled => !string.IsNullOrEmpty(CertificatePath);
}
