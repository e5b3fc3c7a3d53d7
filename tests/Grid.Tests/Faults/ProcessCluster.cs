using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Grid.Configuration;

namespace Grid.Tests.Faults;

/// <summary>
/// A real Grid cluster on loopback, one OS process per part, started and killed one by one (deploy/local/cluster.sh
/// starts the same commands all at once): a <c>redis-server</c> for Orleans membership, <c>grid-silo</c> processes
/// (attention and/or expert groups, or elastic) and <c>grid serve</c> gateways, each on its own free ports. Every
/// process writes stdout and stderr to <c>&lt;StateDir&gt;/&lt;name&gt;.log</c>; a failure to come up names the
/// process and ends with its log tail. <see cref="Kill9Async"/> is a real SIGKILL: nothing of the process gets to
/// run (no graceful leave, no cache release), which is what a crashed host looks like to the rest of the cluster.
/// Disposal SIGKILLs whatever is still running. Self-contained (no xunit), so the benchmarks link it too.
/// </summary>
public sealed class ProcessCluster : IAsyncDisposable
{
    /// <summary>How long a process may take to come up (a loaded 2-core CI machine builds and tests in parallel).</summary>
    public static readonly TimeSpan StartLimit = TimeSpan.FromSeconds(180);

    readonly Dictionary<string, Child> _children = new();
    readonly Dictionary<string, SiloHandle> _silos = new();
    readonly List<GatewayHandle> _gateways = new();
    readonly IReadOnlyDictionary<string, string> _commonEnv;
    readonly Action<string> _log;
    readonly EventHandler _onExit;
    int _disposed;

    /// <param name="modelDir">The checkpoint every process serves.</param>
    /// <param name="expertGroups">Grid:Cluster:ExpertGroups (must divide the checkpoint's n_routed_experts).</param>
    /// <param name="commonEnv">Environment variables for every silo and gateway (e.g. <c>Grid__Cluster__LeaseSeconds</c>).</param>
    /// <param name="log">Progress lines (test output); none by default.</param>
    public ProcessCluster(string modelDir, int expertGroups, IDictionary<string, string>? commonEnv = null, Action<string>? log = null)
    {
        ModelDir = Path.GetFullPath(modelDir);
        ExpertGroups = expertGroups;
        _commonEnv = new Dictionary<string, string>(commonEnv ?? new Dictionary<string, string>());
        _log = log ?? (_ => { });
        RepoRoot = FindRepoRoot();
        BuildConfig = AppContext.BaseDirectory.Split(Path.DirectorySeparatorChar).Contains("Release") ? "Release" : "Debug";
        StateDir = Path.Combine(Path.GetTempPath(), $"grid-faults-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
        Directory.CreateDirectory(StateDir);
        ClusterId = "grid-faults-" + Guid.NewGuid().ToString("N")[..8];
        SiloDll = Path.Combine(RepoRoot, "silos", "bin", BuildConfig, "net10.0", "grid-silo.dll");
        GatewayDll = Path.Combine(RepoRoot, "gateway", "bin", BuildConfig, "net10.0", "grid.dll");
        foreach (var dll in new[] { SiloDll, GatewayDll })
            if (!File.Exists(dll)) throw new FileNotFoundException($"{dll} not found: build Grid.sln in {BuildConfig} first", dll);
        // A crashed or cancelled test run must not leave processes behind.
        _onExit = (_, _) => KillAll();
        AppDomain.CurrentDomain.ProcessExit += _onExit;
    }

    public string ModelDir { get; }
    public int ExpertGroups { get; }
    public string RepoRoot { get; }
    public string BuildConfig { get; }
    /// <summary>Logs (<c>name.log</c>) of every process. Removed on dispose unless GRID_FAULTS_KEEP=1.</summary>
    public string StateDir { get; }
    public string ClusterId { get; }
    public string SiloDll { get; }
    public string GatewayDll { get; }
    /// <summary>The Redis port (fixed for the cluster's life: a restarted Redis comes back on it).</summary>
    public int RedisPort { get; private set; }
    public string RedisAddress => $"127.0.0.1:{RedisPort}";
    public IReadOnlyList<GatewayHandle> Gateways => _gateways;

    /// <summary>The repository root (the folder holding deploy/local/cluster.sh), found above this assembly.</summary>
    public static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "deploy", "local", "cluster.sh"))) return dir.FullName;
        throw new DirectoryNotFoundException("repository root (deploy/local/cluster.sh) not found above " + AppContext.BaseDirectory);
    }

    // ---- Redis ----

    /// <summary>The Redis password (<c>--requirepass</c>) when <see cref="StartRedisAsync"/> was given one.</summary>
    public string? RedisPassword { get; private set; }

    /// <summary>
    /// Starts an empty <c>redis-server</c> (no persistence) on a free loopback port, requiring <paramref name="password"/>
    /// when one is given (silos and gateways then need <c>Grid__Cluster__RedisPassword</c>); returns once it answers PING.
    /// </summary>
    public async Task StartRedisAsync(string? password = null)
    {
        if (RedisPort == 0) RedisPort = GridClusterOptions.FreePort();
        RedisPassword = password ?? RedisPassword;
        List<string> args = ["--port", RedisPort.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        if (RedisPassword is not null) args.AddRange(["--requirepass", RedisPassword]);
        Start("redis", "redis-server", args, new Dictionary<string, string>());
        await PollAsync(async () => await RedisPingAsync(RedisPort, RedisPassword), "redis", "redis-server answering PING");
        _log($"redis up on {RedisAddress}");
    }

    /// <summary>Redis is lost (SIGKILL) and a fresh, empty one comes back on the same port: membership rows are gone.</summary>
    public async Task RestartRedisAsync()
    {
        await Kill9Async("redis");
        await StartRedisAsync();
    }

    static async Task<bool> RedisPingAsync(int port, string? password)
    {
        try
        {
            using var client = new TcpClient();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            await client.ConnectAsync(IPAddress.Loopback, port, timeout.Token);
            var stream = client.GetStream();
            if (password is not null)
            {
                // RESP array: AUTH <password>, then the +OK.
                await stream.WriteAsync(Encoding.UTF8.GetBytes($"*2\r\n$4\r\nAUTH\r\n${Encoding.UTF8.GetByteCount(password)}\r\n{password}\r\n"), timeout.Token);
                var ok = new byte[64];
                int read = await stream.ReadAsync(ok, timeout.Token);
                if (!Encoding.ASCII.GetString(ok, 0, read).StartsWith("+OK")) return false;
            }
            await stream.WriteAsync("PING\r\n"u8.ToArray(), timeout.Token);
            var buffer = new byte[16];
            int n = await stream.ReadAsync(buffer, timeout.Token);
            return Encoding.ASCII.GetString(buffer, 0, n).StartsWith("+PONG");
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException) { return false; }
    }

    // ---- silos ----

    /// <summary>
    /// Starts <c>grid-silo</c> <paramref name="name"/>: attention or not, the expert groups it declares, elastic
    /// (<c>--elastic true</c>: may serve any group, loading it on demand). Returns once the process runs; see
    /// <see cref="WaitSiloReadyAsync"/> (start several, then wait for them together: they load in parallel).
    /// </summary>
    /// <param name="metrics">Serve Prometheus metrics on a free port (<see cref="SiloMetricAsync"/>); off (<c>--metrics-port 0</c>) by default.</param>
    public SiloHandle StartSilo(string name, bool attention, int[] groups, bool elastic = false, IDictionary<string, string>? extraEnv = null, bool metrics = false)
    {
        if (RedisPort == 0) throw new InvalidOperationException("start Redis first");
        int siloPort = GridClusterOptions.FreePort(), gatewayPort = GridClusterOptions.FreePort();
        int metricsPort = metrics ? GridClusterOptions.FreePort() : 0;
        var args = new List<string>
        {
            SiloDll, "--torch-threads", "1", "--model", ModelDir, "--expert-groups", ExpertGroups.ToString(),
            "--attention", attention ? "true" : "false", "--clustering", "redis", "--redis", RedisAddress,
            "--silo-port", siloPort.ToString(), "--gateway-port", gatewayPort.ToString(), "--metrics-port", metricsPort.ToString(),
        };
        args.AddRange(["--groups", string.Join(",", groups)]);   // "" = none (grid-silo.json defaults to group 0)
        if (elastic) args.AddRange(["--elastic", "true"]);
        var env = new Dictionary<string, string>(_commonEnv)
        {
            ["OMP_WAIT_POLICY"] = "PASSIVE",
            ["Grid__Cluster__ClusterId"] = ClusterId,
        };
        foreach (var (k, v) in extraEnv ?? new Dictionary<string, string>()) env[k] = v;
        Start(name, "dotnet", args, env);
        _log($"silo {name}: attention={attention} groups=[{string.Join(",", groups)}]{(elastic ? " elastic" : "")} silo port {siloPort}");
        var silo = new SiloHandle(name, siloPort, gatewayPort, metricsPort, attention, groups, elastic);
        lock (_children) _silos[name] = silo;
        return silo;
    }

    public SiloHandle Silo(string name)
    {
        lock (_children) return _silos[name];
    }

    /// <summary>
    /// The sum of a metric's series (e.g. <c>grid_silo_sequences</c>) on silo <paramref name="name"/>'s Prometheus
    /// endpoint (started with <c>metrics: true</c>); null when the silo does not answer or lacks the metric.
    /// </summary>
    public async Task<double?> SiloMetricAsync(string name, string metric)
    {
        var silo = Silo(name);
        if (silo.MetricsPort == 0) throw new InvalidOperationException($"{name} was started without metrics");
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            return MetricSum(await http.GetStringAsync($"http://127.0.0.1:{silo.MetricsPort}/metrics"), metric);
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { return null; }
    }

    /// <summary>The sum of a metric's series on the gateway's <c>/metrics</c>; null when it does not answer or lacks the metric.</summary>
    public static async Task<double?> GatewayMetricAsync(GatewayHandle gateway, string metric)
    {
        try { return MetricSum(await gateway.Http.GetStringAsync("/metrics"), metric); }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { return null; }
    }

    /// <summary>The sum of the values of <paramref name="metric"/>'s series in a Prometheus text exposition; null when absent.</summary>
    static double? MetricSum(string text, string metric)
    {
        double? sum = null;
        foreach (var line in text.Split('\n'))
        {
            if (!line.StartsWith(metric, StringComparison.Ordinal) || line.Length == metric.Length || (line[metric.Length] != ' ' && line[metric.Length] != '{')) continue;
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            // "name{labels} value [timestamp]": the value follows the closing brace (labels may hold spaces).
            var afterLabels = line[(line.LastIndexOf('}') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var value = line.Contains('{') ? afterLabels[0] : parts[1];
            if (double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v)) sum = (sum ?? 0) + v;
        }
        return sum;
    }

    /// <summary><see cref="StartSilo"/> and <see cref="WaitSiloReadyAsync"/>.</summary>
    public async Task<SiloHandle> StartSiloAsync(string name, bool attention, int[] groups, bool elastic = false, IDictionary<string, string>? extraEnv = null, bool metrics = false)
    {
        var silo = StartSilo(name, attention, groups, elastic, extraEnv, metrics);
        await WaitSiloReadyAsync(name);
        return silo;
    }

    /// <summary>Waits until silo <paramref name="name"/> logged "silo ready" (its weights are loaded and it runs).</summary>
    public Task WaitSiloReadyAsync(string name) => WaitForLogAsync(name, "silo ready");

    /// <summary>Waits until process <paramref name="name"/>'s log contains <paramref name="text"/>; fails with its log tail if it exits first.</summary>
    public Task WaitForLogAsync(string name, string text, TimeSpan? limit = null) =>
        PollAsync(() => Task.FromResult(ReadLog(name).Contains(text, StringComparison.Ordinal)), name, $"'{text}' in its log", limit);

    // ---- gateways ----

    /// <summary>
    /// Starts <c>grid serve</c> <paramref name="name"/> against this cluster (Redis membership, this cluster id, the
    /// expert groups, <paramref name="attentionShards"/> attention shards) on a free port; returns once GET /ready is 200.
    /// </summary>
    public async Task<GatewayHandle> StartGatewayAsync(string name, int attentionShards, IDictionary<string, string>? extraEnv = null)
    {
        if (RedisPort == 0) throw new InvalidOperationException("start Redis first");
        int port = GridClusterOptions.FreePort();
        var env = new Dictionary<string, string>(_commonEnv)
        {
            ["Grid__Cluster__Clustering"] = "redis",
            ["Grid__Cluster__Redis"] = RedisAddress,
            ["Grid__Cluster__ClusterId"] = ClusterId,
            ["Grid__Cluster__ExpertGroups"] = ExpertGroups.ToString(),
            ["Grid__Cluster__AttentionShards"] = attentionShards.ToString(),
            ["Grid__Http__DebugEndpoints"] = "true",   // the tests read /debug/cache
        };
        foreach (var (k, v) in extraEnv ?? new Dictionary<string, string>()) env[k] = v;
        Start(name, "dotnet", [GatewayDll, "serve", "--model", ModelDir, "--host", "127.0.0.1", "--port", port.ToString()], env);
        var gateway = new GatewayHandle(name, port);
        _gateways.Add(gateway);
        _log($"gateway {name}: http://127.0.0.1:{port} ({attentionShards} attention shards)");
        await PollAsync(async () =>
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                using var response = await gateway.Http.GetAsync("/ready", timeout.Token);
                return response.StatusCode == HttpStatusCode.OK;
            }
            catch (Exception e) when (e is HttpRequestException or OperationCanceledException or IOException) { return false; }
        }, name, "GET /ready answering 200");
        _log($"gateway {name}: ready");
        return gateway;
    }

    public GatewayHandle Gateway(string name) => _gateways.Single(g => g.Name == name);

    // ---- processes ----

    /// <summary>SIGKILLs the process <paramref name="name"/> started and waits until it has exited.</summary>
    public async Task Kill9Async(string name)
    {
        Child child;
        lock (_children) child = _children[name];
        _log($"kill -9 {name} (pid {child.Process.Id})");
        try { child.Process.Kill(entireProcessTree: false); }   // SIGKILL on Unix
        catch (InvalidOperationException) { }                   // already gone
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await child.Process.WaitForExitAsync(limit.Token);
        lock (_children) _children.Remove(name);
        child.Process.Dispose();
    }

    /// <summary>
    /// SIGSTOPs the process <paramref name="name"/> started: it stays in the process table with its sockets open and
    /// answers nothing (a hung machine, not a crashed one) until disposal kills it.
    /// </summary>
    public void Freeze(string name)
    {
        Child child;
        lock (_children) child = _children[name];
        _log($"kill -STOP {name} (pid {child.Process.Id})");
        using var kill = System.Diagnostics.Process.Start("kill", ["-STOP", child.Process.Id.ToString()]);
        kill.WaitForExit();
        if (kill.ExitCode != 0) throw new InvalidOperationException($"kill -STOP {child.Process.Id} exited with {kill.ExitCode}");
    }

    /// <summary>Waits until process <paramref name="name"/> exits by itself (within <paramref name="limit"/>, default <see cref="StartLimit"/>); returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(string name, TimeSpan? limit = null)
    {
        Child child;
        lock (_children) child = _children[name];
        using var timeout = new CancellationTokenSource(limit ?? StartLimit);
        try { await child.Process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{name} did not exit within {(limit ?? StartLimit).TotalSeconds:F0} s; last log lines:\n{LogTail(name)}");
        }
        return child.Process.ExitCode;
    }

    public bool IsRunning(string name)
    {
        lock (_children) return _children.TryGetValue(name, out var c) && !c.Process.HasExited;
    }

    public int Pid(string name)
    {
        lock (_children) return _children[name].Process.Id;
    }

    public string LogPath(string name) => Path.Combine(StateDir, name + ".log");

    /// <summary>The last <paramref name="lines"/> lines of process <paramref name="name"/>'s log (stdout and stderr).</summary>
    public string LogTail(string name, int lines = 40)
    {
        var all = ReadLog(name).Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }

    /// <summary>Every process's log tail, for a failure message.</summary>
    public string AllLogTails(int lines = 15)
    {
        var names = Directory.GetFiles(StateDir, "*.log").Select(Path.GetFileNameWithoutExtension).OrderBy(n => n);
        return string.Join("\n", names.Select(n => $"--- {n}.log (last {lines} lines) ---\n{LogTail(n!, lines)}"));
    }

    string ReadLog(string name)
    {
        var path = LogPath(name);
        if (!File.Exists(path)) return "";
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        return new StreamReader(stream).ReadToEnd();
    }

    /// <summary>
    /// Starts <paramref name="program"/> through <c>bash -c exec</c>, so the child's pid is the program's own and its
    /// output goes straight to its log file (appended: a restarted process keeps its predecessor's lines).
    /// </summary>
    void Start(string name, string program, IEnumerable<string> args, IDictionary<string, string> env)
    {
        lock (_children)
            if (_children.TryGetValue(name, out var old) && !old.Process.HasExited)
                throw new InvalidOperationException($"{name} is already running (pid {old.Process.Id})");
        var psi = new ProcessStartInfo("bash") { UseShellExecute = false, WorkingDirectory = StateDir };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec \"$@\" </dev/null >>\"$GRID_FAULTS_LOG\" 2>&1");
        psi.ArgumentList.Add("bash");
        psi.ArgumentList.Add(program);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["GRID_FAULTS_LOG"] = LogPath(name);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (k, v) in env) psi.Environment[k] = v;
        File.AppendAllText(LogPath(name), $"=== {DateTime.UtcNow:HH:mm:ss.fff} start: {program} {string.Join(' ', args)}\n");
        var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {name}");
        lock (_children) _children[name] = new Child(name, process);
    }

    /// <summary>Polls <paramref name="done"/> until it holds; fails naming the process and its log tail when it exits or <paramref name="limit"/> passes.</summary>
    async Task PollAsync(Func<Task<bool>> done, string name, string what, TimeSpan? limit = null)
    {
        var clock = Stopwatch.StartNew();
        var max = limit ?? StartLimit;
        for (int attempt = 0; ; attempt++)
        {
            if (await done()) return;
            Process? process;
            lock (_children) process = _children.TryGetValue(name, out var c) ? c.Process : null;
            if (process is null || process.HasExited)
                throw new InvalidOperationException($"{name} exited (code {(process is null ? "?" : process.ExitCode)}) before {what}; last log lines:\n{LogTail(name)}");
            if (clock.Elapsed > max)
                throw new TimeoutException($"{name}: no {what} within {max.TotalSeconds:F0} s; last log lines:\n{LogTail(name)}");
            await Task.Delay(Math.Min(25 << Math.Min(attempt, 4), 250));
        }
    }

    void KillAll()
    {
        Child[] all;
        lock (_children) all = _children.Values.ToArray();
        foreach (var c in all)
        {
            try { if (!c.Process.HasExited) c.Process.Kill(entireProcessTree: true); }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        AppDomain.CurrentDomain.ProcessExit -= _onExit;
        foreach (var g in _gateways) g.Dispose();
        KillAll();
        Child[] all;
        lock (_children) { all = _children.Values.ToArray(); _children.Clear(); }
        foreach (var c in all)
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try { await c.Process.WaitForExitAsync(limit.Token); } catch (OperationCanceledException) { }
            c.Process.Dispose();
        }
        if (Environment.GetEnvironmentVariable("GRID_FAULTS_KEEP") != "1")
        {
            try { Directory.Delete(StateDir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    sealed record Child(string Name, Process Process);
}

/// <summary>A silo process of a <see cref="ProcessCluster"/>.</summary>
public sealed record SiloHandle(string Name, int SiloPort, int GatewayPort, int MetricsPort, bool Attention, int[] Groups, bool Elastic);

/// <summary>A gateway process of a <see cref="ProcessCluster"/>: its name, port and an HttpClient on its base address.</summary>
public sealed class GatewayHandle : IDisposable
{
    public GatewayHandle(string name, int port)
    {
        Name = name;
        Port = port;
        BaseAddress = new Uri($"http://127.0.0.1:{port}");
        // Streams get their own limit (StreamClient); this one bounds plain requests (and headers of streams).
        Http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 256, PooledConnectionLifetime = TimeSpan.FromMinutes(10) })
        {
            BaseAddress = BaseAddress,
            Timeout = TimeSpan.FromMinutes(3),
        };
    }

    public string Name { get; }
    public int Port { get; }
    public Uri BaseAddress { get; }
    public HttpClient Http { get; }

    public void Dispose() => Http.Dispose();
}
