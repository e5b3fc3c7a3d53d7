using System.Net;
using Microsoft.Extensions.Options;

namespace Grid.Configuration;

/// <summary>Collects failures; each message starts with the key it is about.</summary>
abstract class GridValidator : IValidateOptions<GridOptions>
{
    public ValidateOptionsResult Validate(string? name, GridOptions options)
    {
        var failures = new ValidateOptionsResultBuilder();
        Check(options, failures.AddError);
        return failures.Build();
    }

    protected abstract void Check(GridOptions o, Action<string, string?> fail);

    protected static void AtLeast(Action<string, string?> fail, string key, long value, long min)
    {
        if (value < min) fail($"{key} must be at least {min}, got {value}", null);
    }

    protected static void Port(Action<string, string?> fail, string key, int value)
    {
        if (value is < 0 or > 65535) fail($"{key} must be between 0 and 65535, got {value}", null);
    }

    protected static bool IsIp(string value) => IPAddress.TryParse(value, out _);
}

/// <summary><c>Grid:Model:*</c> (gateway and silos).</summary>
sealed class ModelOptionsValidator : GridValidator
{
    static readonly string[] Engines = ["grid", "local"];

    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        var m = o.Model;
        try { Grid.ModelCore.Runtime.DtypeNames.Parse(m.Dtype ?? ""); }
        catch (ArgumentException) { fail($"Grid:Model:Dtype: '{m.Dtype}' is not supported (float32, bfloat16, float16)", null); }
        if (!Engines.Contains(m.Engine ?? "", StringComparer.OrdinalIgnoreCase))
            fail($"Grid:Model:Engine: '{m.Engine}' is not supported (grid, local)", null);
        try { Grid.ModelCore.Kernels.WeightQuantizationNames.Parse(m.Quantization); }
        catch (ArgumentException) { fail($"{GridFlags.Describe("Grid:Model:Quantization")}: '{m.Quantization}' is not supported (none, int8, fp8)", null); }
        if (m.MaxModelLen < 0) fail($"Grid:Model:MaxModelLen must not be negative, got {m.MaxModelLen}", null);
    }
}

/// <summary><c>Grid:Http:*</c> (<c>grid serve</c>).</summary>
sealed class HttpOptionsValidator : GridValidator
{
    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        var h = o.Http;
        Port(fail, "Grid:Http:Port", h.Port);
        if (h.Host != "localhost" && !IsIp(h.Host)) fail($"Grid:Http:Host: '{h.Host}' is not an IP address (or localhost)", null);
        AtLeast(fail, "Grid:Http:MaxRequestBodyBytes", h.MaxRequestBodyBytes, 1024);
        AtLeast(fail, "Grid:Http:MaxChoices", h.MaxChoices, 1);
        AtLeast(fail, "Grid:Http:ChatDefaultMaxTokens", h.ChatDefaultMaxTokens, 1);
        if (h.ApiKeys.Any(string.IsNullOrWhiteSpace)) fail("Grid:Http:ApiKeys: an API key is empty", null);
        if (!string.IsNullOrEmpty(h.ApiKeysFile))
        {
            if (!File.Exists(h.ApiKeysFile)) fail($"Grid:Http:ApiKeysFile: '{h.ApiKeysFile}' not found", null);
            else if (HttpOptions.ReadKeysFile(h.ApiKeysFile).Count == 0) fail($"Grid:Http:ApiKeysFile: '{h.ApiKeysFile}' holds no API key", null);
        }
    }
}

/// <summary><c>Grid:Scheduler:*</c> (<c>grid serve</c>, <c>grid generate</c>).</summary>
sealed class SchedulerOptionsValidator : GridValidator
{
    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        AtLeast(fail, "Grid:Scheduler:MaxRunningSequences", o.Scheduler.MaxRunningSequences, 1);
        AtLeast(fail, "Grid:Scheduler:MaxBatchedTokens", o.Scheduler.MaxBatchedTokens, 1);
        AtLeast(fail, "Grid:Scheduler:PrefillChunkTokens", o.Scheduler.PrefillChunkTokens, 1);
        AtLeast(fail, "Grid:Scheduler:MaxWaiting", o.Scheduler.MaxWaiting, 1);
        if (!(o.Http.KeepAliveSeconds >= 0)) fail($"Grid:Http:KeepAliveSeconds must be 0 (off) or positive, got {o.Http.KeepAliveSeconds}", null);
        if (!(o.Http.DrainSeconds >= 0)) fail($"Grid:Http:DrainSeconds must be 0 or positive, got {o.Http.DrainSeconds}", null);
        if (!(o.Scheduler.MaxQueueSeconds >= 0)) fail($"Grid:Scheduler:MaxQueueSeconds must be 0 (no limit) or positive, got {o.Scheduler.MaxQueueSeconds}", null);
    }
}

/// <summary><c>Grid:Cluster:*</c> (every executable).</summary>
sealed class ClusterOptionsValidator : GridValidator
{
    static readonly string[] Kinds = ["embedded", "localhost", "redis"];

    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        var c = o.Cluster;
        if (!Kinds.Contains(c.Clustering, StringComparer.OrdinalIgnoreCase))
            fail($"Grid:Cluster:Clustering: '{c.Clustering}' is not supported (embedded, localhost, redis)", null);
        if (c.IsRedis && string.IsNullOrWhiteSpace(c.Redis)) fail("Grid:Cluster:Redis must be set when Grid:Cluster:Clustering is redis", null);
        if (!IsIp(c.AdvertisedAddress)) fail($"Grid:Cluster:AdvertisedAddress: '{c.AdvertisedAddress}' is not an IP address", null);
        AtLeast(fail, "Grid:Cluster:ExpertGroups", c.ExpertGroups, 1);
        AtLeast(fail, "Grid:Cluster:AttentionShards", c.AttentionShards, 1);
        AtLeast(fail, "Grid:Cluster:MaxGroupsPerToken", c.MaxGroupsPerToken, 0);
        if (c.ExpertExchange?.ToLowerInvariant() is not ("shard" or "gateway"))
            fail($"Grid:Cluster:ExpertExchange: '{c.ExpertExchange}' is not supported (shard, gateway)", null);
        if (c.LayersPerCall < 0)
            fail($"Grid:Cluster:LayersPerCall: {c.LayersPerCall} must be 0 (the whole step per call) or a positive number of MoE layers", null);
        if (c.WireDtype?.ToLowerInvariant() is not ("float32" or "float16" or "bfloat16"))
            fail($"Grid:Cluster:WireDtype: '{c.WireDtype}' is not supported (float32, float16, bfloat16)", null);
        if (!(c.CallTimeoutSeconds > 0)) fail($"Grid:Cluster:CallTimeoutSeconds must be positive, got {c.CallTimeoutSeconds}", null);
        if (!(c.LeaseSeconds >= 1)) fail($"Grid:Cluster:LeaseSeconds must be at least 1, got {c.LeaseSeconds}", null);
        if (!(c.RecoverySeconds > 0)) fail($"Grid:Cluster:RecoverySeconds must be positive, got {c.RecoverySeconds}", null);
        Port(fail, "Grid:Cluster:SiloPort", c.SiloPort);
        Port(fail, "Grid:Cluster:GatewayPort", c.GatewayPort);
        Port(fail, "Grid:Cluster:PrimarySiloPort", c.PrimarySiloPort);
        foreach (var p in c.GatewayPorts) Port(fail, "Grid:Cluster:GatewayPorts", p);
        if (!(c.ProbeTimeoutSeconds > 0)) fail($"Grid:Cluster:ProbeTimeoutSeconds must be positive, got {c.ProbeTimeoutSeconds}", null);
        AtLeast(fail, "Grid:Cluster:MissedProbesLimit", c.MissedProbesLimit, 1);
        AtLeast(fail, "Grid:Cluster:DeathVotes", c.DeathVotes, 1);
        if (!(c.TableRefreshSeconds > 0)) fail($"Grid:Cluster:TableRefreshSeconds must be positive, got {c.TableRefreshSeconds}", null);
        if (!(c.IAmAliveSeconds > 0)) fail($"Grid:Cluster:IAmAliveSeconds must be positive, got {c.IAmAliveSeconds}", null);
        if (!(c.GatewayListRefreshSeconds > 0)) fail($"Grid:Cluster:GatewayListRefreshSeconds must be positive, got {c.GatewayListRefreshSeconds}", null);
        if (!(c.MaxJoinSeconds > 0)) fail($"Grid:Cluster:MaxJoinSeconds must be positive, got {c.MaxJoinSeconds}", null);
        if (c.Tls.IsEnabled)
        {
            try { Grid.Grains.Hosting.ClusterTls.Load(c.Tls); }
            catch (GridConfigurationException e) { fail(e.Message, null); }
        }
        else if (!string.IsNullOrEmpty(c.Tls.CaPath) || !string.IsNullOrEmpty(c.Tls.KeyPath))
            fail("Grid:Cluster:Tls:CertificatePath must be set when Grid:Cluster:Tls:CaPath or KeyPath is (TLS needs this process's certificate)", null);
        if (!(c.MembershipStoreCheckSeconds >= 0)) fail($"Grid:Cluster:MembershipStoreCheckSeconds must be 0 (off) or positive, got {c.MembershipStoreCheckSeconds}", null);
    }
}

/// <summary>The latent-cache keys under <c>Grid:Silo</c>: read by every executable that hosts attention (a silo, the embedded silo, the local engine).</summary>
sealed class CacheOptionsValidator : GridValidator
{
    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        AtLeast(fail, "Grid:Silo:CacheBlockSize", o.Silo.CacheBlockSize, 1);
        try { Grid.ModelCore.Cache.KvCacheDtypeNames.Parse(o.Silo.KvCacheDtype); }
        catch (ArgumentException) { fail($"{GridFlags.Describe("Grid:Silo:KvCacheDtype")}: '{o.Silo.KvCacheDtype}' is not supported (auto, int8, fp8)", null); }
        if (o.Silo.CacheMaxBytes is long bytes) AtLeast(fail, "Grid:Silo:CacheMaxBytes", bytes, 1 << 20);
        if (!(o.Silo.MemoryUtilization > 0 && o.Silo.MemoryUtilization <= 1))
            fail($"{GridFlags.Describe("Grid:Silo:MemoryUtilization")} must be a fraction in (0, 1], got {o.Silo.MemoryUtilization}", null);
    }
}

/// <summary><c>Grid:Silo:*</c> and what a silo needs of <c>Grid:Model</c> (<c>grid-silo</c>).</summary>
sealed class SiloOptionsValidator : GridValidator
{
    protected override void Check(GridOptions o, Action<string, string?> fail)
    {
        var s = o.Silo;
        if (string.IsNullOrEmpty(o.Model.Path) || !Directory.Exists(o.Model.Path))
            fail($"{GridFlags.Describe("Grid:Model:Path")}: '{o.Model.Path}' is not a folder", null);
        try { Grid.Grains.Hosting.ModelHost.ValidateDevice(s.Device); }
        catch (ArgumentException e) { fail(e.Message, null); }
        foreach (var g in s.ExpertGroups)
            if (g < 0 || g >= o.Cluster.ExpertGroups)
                fail($"Grid:Silo:ExpertGroups: group {g} is outside 0..{o.Cluster.ExpertGroups - 1} (Grid:Cluster:ExpertGroups is {o.Cluster.ExpertGroups})", null);
        AtLeast(fail, "Grid:Silo:Ordinal", s.Ordinal, -1);
        AtLeast(fail, "Grid:Silo:ExpertSilos", s.ExpertSilos, 0);
        if (s.Ordinal >= 0 && s.ExpertSilos == 0)
            fail($"Grid:Silo:ExpertSilos must be set (>= 1) when Grid:Silo:Ordinal is ({s.Ordinal}): the expert layout is computed over it", null);
        AtLeast(fail, "Grid:Silo:TorchThreads", s.TorchThreads, 0);
        Port(fail, "Grid:Silo:MetricsPort", s.MetricsPort);
    }
}
