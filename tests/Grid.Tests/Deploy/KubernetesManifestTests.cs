using System.Text.RegularExpressions;
using Grid.Configuration;
using Grid.Tests.Faults;
using k8s;
using k8s.Models;
using Xunit;

namespace Grid.Tests.Deploy;

/// <summary>
/// deploy/k8s/grid.yaml, loaded strictly as typed Kubernetes objects (KubernetesClient: an unknown field fails), checked
/// for what a cluster needs and what the issue found missing: headless Services behind the StatefulSets, probes,
/// resources, disruption budgets, a grace period above the gateway's drain, non-root containers, secrets out of argv,
/// pinned images, a valid Grid:* configuration and an expert layout that covers every group.
/// </summary>
public sealed class KubernetesManifestTests
{
    static readonly string Root = ProcessCluster.FindRepoRoot();
    static readonly string ManifestPath = Path.Combine(Root, "deploy", "k8s", "grid.yaml");
    static readonly List<object> Objects = KubernetesYaml.LoadAllFromString(File.ReadAllText(ManifestPath), strict: true);

    static IEnumerable<T> All<T>() => Objects.OfType<T>();
    static V1ConfigMap Config => All<V1ConfigMap>().Single(c => c.Metadata.Name == "grid-config");
    static V1StatefulSet StatefulSet(string name) => All<V1StatefulSet>().Single(s => s.Metadata.Name == name);
    static V1Deployment Deployment(string name) => All<V1Deployment>().Single(d => d.Metadata.Name == name);

    /// <summary>Every workload's name and pod template.</summary>
    static IEnumerable<(string Name, V1PodTemplateSpec Template)> Workloads() =>
        All<V1StatefulSet>().Select(s => (s.Metadata.Name, s.Spec.Template))
            .Concat(All<V1Deployment>().Select(d => (d.Metadata.Name, d.Spec.Template)));

    static IEnumerable<(string Workload, V1Container Container)> Containers() =>
        Workloads().SelectMany(w => w.Template.Spec.Containers.Select(c => (w.Name, c)));

    /// <summary>The Grid containers (silos and gateway), not Redis.</summary>
    static IEnumerable<(string Workload, V1Container Container, V1PodSpec Pod)> GridContainers() =>
        Workloads().Where(w => w.Name.StartsWith("grid-", StringComparison.Ordinal) && w.Name != "grid-redis")
            .SelectMany(w => w.Template.Spec.Containers.Select(c => (w.Name, c, w.Template.Spec)));

    static bool Selects(IDictionary<string, string> selector, IDictionary<string, string> labels) =>
        selector.Count > 0 && selector.All(kv => labels.TryGetValue(kv.Key, out var v) && v == kv.Value);

    [Fact]
    public void TheManifestHasEveryPart()
    {
        Assert.Equal(["grid-attention", "grid-experts"], All<V1StatefulSet>().Select(s => s.Metadata.Name).Order());
        Assert.Equal(["grid-gateway", "grid-redis"], All<V1Deployment>().Select(s => s.Metadata.Name).Order());
        Assert.Equal(["grid", "grid-attention", "grid-experts", "grid-redis"], All<V1Service>().Select(s => s.Metadata.Name).Order());
        Assert.Equal(3, All<V1PodDisruptionBudget>().Count());
        Assert.Single(All<V1ConfigMap>());
    }

    [Fact]
    public void EveryStatefulSetHasItsHeadlessService()
    {
        foreach (var set in All<V1StatefulSet>())
        {
            var service = All<V1Service>().SingleOrDefault(s => s.Metadata.Name == set.Spec.ServiceName);
            Assert.True(service is not null, $"{set.Metadata.Name}: serviceName {set.Spec.ServiceName} has no Service");
            Assert.Equal("None", service.Spec.ClusterIP);
            Assert.True(Selects(service.Spec.Selector, set.Spec.Template.Metadata.Labels), $"{service.Metadata.Name} does not select {set.Metadata.Name}'s pods");
            Assert.True(Selects(set.Spec.Selector.MatchLabels, set.Spec.Template.Metadata.Labels), $"{set.Metadata.Name}: selector does not match its template");
            // Only its own pods: the attention and expert Services must not select each other's pods.
            foreach (var other in All<V1StatefulSet>().Where(o => o != set))
                Assert.False(Selects(service.Spec.Selector, other.Spec.Template.Metadata.Labels), $"{service.Metadata.Name} also selects {other.Metadata.Name}'s pods");
        }
        foreach (var service in All<V1Service>())
            Assert.True(Workloads().Any(w => Selects(service.Spec.Selector, w.Template.Metadata.Labels)), $"Service {service.Metadata.Name} selects no pods");
    }

    [Fact]
    public void EveryContainerHasLivenessAndReadinessProbesOnItsOwnPorts()
    {
        foreach (var (workload, c) in Containers())
        {
            Assert.True(c.LivenessProbe is not null, $"{workload}/{c.Name}: no liveness probe");
            Assert.True(c.ReadinessProbe is not null, $"{workload}/{c.Name}: no readiness probe");
            foreach (var probe in new[] { c.LivenessProbe, c.ReadinessProbe, c.StartupProbe }.OfType<V1Probe>())
            {
                var port = probe.HttpGet?.Port ?? probe.TcpSocket?.Port;
                Assert.True(port is not null, $"{workload}/{c.Name}: a probe without an HTTP or TCP port");
                Assert.Contains(c.Ports, p => p.Name == port.Value || p.ContainerPort.ToString() == port.Value);
            }
        }
        // Grid processes: liveness on /health, readiness on /ready (silos on their metrics port, the gateway on HTTP).
        foreach (var (workload, c, _) in GridContainers())
        {
            Assert.Equal("/health", c.LivenessProbe.HttpGet.Path);
            Assert.Equal("/ready", c.ReadinessProbe.HttpGet.Path);
            Assert.Equal(workload == "grid-gateway" ? "http" : "metrics", c.ReadinessProbe.HttpGet.Port.Value);
        }
    }

    [Fact]
    public void EveryContainerHasResourceRequestsAndLimits()
    {
        foreach (var (workload, c) in Containers())
            foreach (var resource in new[] { "cpu", "memory" })
            {
                Assert.True(c.Resources?.Requests?.ContainsKey(resource) == true, $"{workload}/{c.Name}: no {resource} request");
                Assert.True(c.Resources?.Limits?.ContainsKey(resource) == true, $"{workload}/{c.Name}: no {resource} limit");
                Assert.True(c.Resources.Limits[resource].ToDecimal() >= c.Resources.Requests[resource].ToDecimal(), $"{workload}/{c.Name}: {resource} limit below its request");
            }
    }

    [Theory]
    [InlineData("grid-attention")]
    [InlineData("grid-experts")]
    public void SiloStatefulSetsHaveADisruptionBudgetThatKeepsOnePodServing(string name)
    {
        var set = StatefulSet(name);
        var budgets = All<V1PodDisruptionBudget>().Where(b => Selects(b.Spec.Selector.MatchLabels, set.Spec.Template.Metadata.Labels)).ToList();
        var budget = Assert.Single(budgets);
        int replicas = set.Spec.Replicas ?? 1;
        int available = budget.Spec.MinAvailable is { } min ? int.Parse(min.Value) : replicas - int.Parse(budget.Spec.MaxUnavailable.Value);
        Assert.True(available >= 1, $"{name}: the budget lets every pod go at once");
        Assert.True(available < replicas, $"{name}: the budget blocks every eviction (a node drain would hang)");
    }

    [Fact]
    public void TheGatewaysGracePeriodOutlastsItsDrain()
    {
        double drain = Config.Data.TryGetValue("Grid__Http__DrainSeconds", out var value) ? double.Parse(value, System.Globalization.CultureInfo.InvariantCulture) : new HttpOptions().DrainSeconds;
        Assert.Equal(30, drain);
        var grace = Deployment("grid-gateway").Spec.Template.Spec.TerminationGracePeriodSeconds;
        Assert.True(grace >= drain + 10, $"terminationGracePeriodSeconds {grace} must be at least the drain ({drain} s) plus a 10 s margin");
        foreach (var set in All<V1StatefulSet>())
            Assert.True(set.Spec.Template.Spec.TerminationGracePeriodSeconds >= 30, $"{set.Metadata.Name}: a silo needs time to leave the cluster");
    }

    [Fact]
    public void ContainersRunAsNonRootWithAReadOnlyRootAndNoCapabilities()
    {
        foreach (var (name, template) in Workloads())
        {
            var pod = template.Spec.SecurityContext;
            Assert.True(pod?.RunAsNonRoot == true, $"{name}: runAsNonRoot");
            Assert.True(pod.RunAsUser is > 0, $"{name}: runAsUser must be a non-root uid");
            Assert.Equal("RuntimeDefault", pod.SeccompProfile?.Type);
            Assert.False(template.Spec.AutomountServiceAccountToken ?? true, $"{name}: the pods use no Kubernetes API; no service account token");
            foreach (var c in template.Spec.Containers)
            {
                var s = c.SecurityContext;
                Assert.True(s is not null, $"{name}/{c.Name}: no securityContext");
                Assert.False(s.AllowPrivilegeEscalation ?? true, $"{name}/{c.Name}: allowPrivilegeEscalation");
                Assert.True(s.ReadOnlyRootFilesystem == true, $"{name}/{c.Name}: readOnlyRootFilesystem");
                Assert.Equal(["ALL"], s.Capabilities?.Drop ?? []);
                Assert.True(s.Privileged is null or false);
            }
        }
        // The Grid containers' uid is the image's USER, and they get a writable /tmp.
        var user = Regex.Match(File.ReadAllText(Path.Combine(Root, "deploy", "docker", "Dockerfile")), @"^USER (\d+)", RegexOptions.Multiline);
        Assert.True(user.Success, "the Dockerfile sets no numeric USER");
        foreach (var (workload, c, pod) in GridContainers())
        {
            Assert.Equal(long.Parse(user.Groups[1].Value), pod.SecurityContext.RunAsUser);
            var tmp = Assert.Single(c.VolumeMounts, m => m.MountPath == "/tmp");
            Assert.NotNull(pod.Volumes.Single(v => v.Name == tmp.Name).EmptyDir);
        }
    }

    [Fact]
    public void SecretsComeFromSecretsNeverFromArgvOrTheConfigMap()
    {
        foreach (var (workload, c) in Containers())
        {
            var argv = string.Join(' ', (c.Command ?? []).Concat(c.Args ?? []));
            foreach (var flag in new[] { "--api-key", "--redis-password", "--tls-certificate" })
                Assert.DoesNotContain(flag, argv);
            foreach (var e in c.Env ?? [])
                if (e.Name is "GRID_API_KEY" or "Grid__Cluster__RedisPassword" or "REDIS_PASSWORD" || e.Name.StartsWith("Grid__Http__ApiKeys__", StringComparison.Ordinal))
                    Assert.True(e.Value is null && e.ValueFrom?.SecretKeyRef is not null, $"{workload}/{c.Name}: {e.Name} must come from a Secret");
        }
        Assert.DoesNotContain(Config.Data.Keys, k => k.Contains("Password", StringComparison.OrdinalIgnoreCase) || k.StartsWith("Grid__Http__ApiKeys__", StringComparison.Ordinal) || k == "GRID_API_KEY");
        // Every Grid container gets the Redis password from the Secret; the gateway's API keys file is a mounted Secret.
        foreach (var (workload, c, _) in GridContainers())
            Assert.Contains(c.Env, e => e.Name == "Grid__Cluster__RedisPassword" && e.ValueFrom?.SecretKeyRef?.Name == "grid-secrets");
        var gateway = Deployment("grid-gateway").Spec.Template.Spec;
        AssertFileFromSecret(gateway, gateway.Containers.Single(), Config.Data["Grid__Http__ApiKeysFile"], "grid-secrets");
        // Redis requires the password.
        var redis = Deployment("grid-redis").Spec.Template.Spec.Containers.Single();
        Assert.Contains("--requirepass", redis.Args);
        Assert.Contains(redis.Env, e => e.Name == "REDIS_PASSWORD" && e.ValueFrom?.SecretKeyRef?.Name == "grid-secrets");
    }

    /// <summary>The file at <paramref name="path"/> is in a volume mounted from Secret <paramref name="secret"/>.</summary>
    static void AssertFileFromSecret(V1PodSpec pod, V1Container container, string path, string secret)
    {
        var mount = container.VolumeMounts.SingleOrDefault(m => path.StartsWith(m.MountPath.TrimEnd('/') + "/", StringComparison.Ordinal));
        Assert.True(mount is not null, $"{container.Name}: nothing is mounted at {path}");
        var volume = pod.Volumes.Single(v => v.Name == mount.Name);
        Assert.Equal(secret, volume.Secret?.SecretName);
        var file = path[(mount.MountPath.TrimEnd('/').Length + 1)..];
        Assert.True(volume.Secret!.Items is null || volume.Secret.Items.Any(i => i.Path == file), $"{container.Name}: secret {secret} does not project {file}");
    }

    [Fact]
    public void ClusterTlsFilesAreMountedFromTheTlsSecretInEveryGridContainer()
    {
        var keys = new[] { "Grid__Cluster__Tls__CertificatePath", "Grid__Cluster__Tls__KeyPath", "Grid__Cluster__Tls__CaPath" };
        foreach (var (workload, c, pod) in GridContainers())
            foreach (var key in keys)
                AssertFileFromSecret(pod, c, Config.Data[key], "grid-cluster-tls");
        Assert.Equal(["ca.crt", "tls.crt", "tls.key"], keys.Select(k => Path.GetFileName(Config.Data[k])).Order());
    }

    [Fact]
    public void ImagesArePinnedAndTheGridTagIsTheOneTheDockerfileBuilds()
    {
        foreach (var (workload, c) in Containers())
        {
            var tag = c.Image.Contains('@') ? c.Image[(c.Image.IndexOf('@') + 1)..] : c.Image.Contains(':') ? c.Image[(c.Image.LastIndexOf(':') + 1)..] : "";
            Assert.False(tag is "" or "latest", $"{workload}/{c.Name}: image {c.Image} is not pinned");
        }
        var built = Regex.Match(File.ReadAllText(Path.Combine(Root, "deploy", "docker", "Dockerfile")), @"docker build .* -t (\S+)");
        Assert.True(built.Success);
        foreach (var (workload, c, _) in GridContainers())
            Assert.Equal(built.Groups[1].Value, c.Image);
    }

    [Fact]
    public void EveryGridSettingIsAGridKey()
    {
        var keys = GridKeys.All().Select(k => k.Key).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var settings = Config.Data.Keys.Concat(GridContainers().SelectMany(x => x.Container.Env ?? []).Select(e => e.Name))
            .Where(k => k.StartsWith("Grid__", StringComparison.Ordinal)).Distinct().ToList();
        Assert.NotEmpty(settings);
        foreach (var name in settings)
            Assert.True(keys.Contains(name.Replace("__", ":")), $"{name} is not a Grid:* key (docs/configuration.md)");
    }

    [Fact]
    public void AttentionShardsMatchTheAttentionPods()
    {
        Assert.Equal(StatefulSet("grid-attention").Spec.Replicas, int.Parse(Config.Data["Grid__Cluster__AttentionShards"]));
    }

    [Fact]
    public void ExpertPodsTakeTheirGroupsFromTheirOrdinalAndCoverEveryGroup()
    {
        var set = StatefulSet("grid-experts");
        var env = set.Spec.Template.Spec.Containers.Single().Env;
        Assert.Equal("metadata.labels['apps.kubernetes.io/pod-index']", env.Single(e => e.Name == "Grid__Silo__Ordinal").ValueFrom.FieldRef.FieldPath);
        Assert.Equal("true", env.Single(e => e.Name == "Grid__Silo__Elastic").Value);
        Assert.DoesNotContain(env, e => e.Name == "Grid__Silo__ExpertGroups");
        Assert.DoesNotContain(set.Spec.Template.Spec.Containers.Single().Args ?? [], a => a.Contains("HOSTNAME"));
        int silos = int.Parse(env.Single(e => e.Name == "Grid__Silo__ExpertSilos").Value);
        Assert.Equal(set.Spec.Replicas, silos);
        int groups = int.Parse(Config.Data["Grid__Cluster__ExpertGroups"]);
        var covered = Enumerable.Range(0, silos).SelectMany(i => ExpertLayout.GroupsFor(i, silos, groups)).Distinct().Order();
        Assert.Equal(Enumerable.Range(0, groups), covered);
    }

    [Fact]
    public void TheImageRunsAsNonRootAndItsBuildContextLeavesOutBuildOutput()
    {
        var dockerfile = File.ReadAllLines(Path.Combine(Root, "deploy", "docker", "Dockerfile"));
        // The final stage's last USER is a non-root uid, set before the entrypoint.
        int finalStage = Array.FindLastIndex(dockerfile, l => l.StartsWith("FROM ", StringComparison.Ordinal));
        var user = dockerfile.Skip(finalStage).LastOrDefault(l => l.StartsWith("USER ", StringComparison.Ordinal));
        Assert.True(user is not null, "the final stage sets no USER");
        var uid = user["USER ".Length..].Split(':')[0];
        Assert.True(long.TryParse(uid, out var id) && id > 0, $"USER {uid} must be a numeric non-root uid (runAsNonRoot can only check numbers)");
        Assert.True(Array.FindIndex(dockerfile, finalStage, l => l.StartsWith("USER ", StringComparison.Ordinal)) < Array.FindIndex(dockerfile, l => l.StartsWith("ENTRYPOINT", StringComparison.Ordinal)));
        Assert.Contains(dockerfile, l => l.Contains("COPY . ."));   // the context is the repository root
        var ignore = File.ReadAllLines(Path.Combine(Root, ".dockerignore")).Select(l => l.Trim()).ToHashSet();
        foreach (var entry in new[] { ".git", "**/bin/", "**/obj/", ".grid/", "**/*.safetensors" })
            Assert.Contains(entry, ignore);
    }
}
