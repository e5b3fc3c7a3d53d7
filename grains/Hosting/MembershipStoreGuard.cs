using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;

namespace Grid.Grains.Hosting;

/// <summary>
/// Keeps Redis membership working when the Redis server restarts empty (no persistence, a new pod, a FLUSHALL).
/// Orleans' Redis membership table does not survive losing its hash: reads fail ("the table version is missing"),
/// heartbeats fail, no silo can be declared dead and no silo can join, and a table re-created from version 0 would be
/// ignored by every silo (their views are newer) until its version passed theirs, at which point a silo whose row is
/// missing from that newer view stops itself as dead.
/// <para>
/// So every silo mirrors the table (the raw hash: version row and member rows, in the provider's own format) every
/// <c>Grid:Cluster:MembershipStoreCheckSeconds</c> while it holds its own row. When the version row or its own row
/// is gone, it writes them back in one Lua script: the first silo to notice restores the whole table it last saw, at
/// that version (so no silo sees a newer view without itself), and each silo re-inserts its own row if still missing.
/// Membership then carries on where it was: heartbeats patch the rows again, deaths can be declared, silos can join.
/// </para>
/// </summary>
public sealed partial class MembershipStoreGuard(ConfigurationOptions redis, RedisKey table, string ownField, TimeSpan period,
    ILogger<MembershipStoreGuard> logger) : BackgroundService
{
    const string VersionField = "Version";

    // KEYS[1] the table; ARGV: version, then field/value pairs, this silo's row first. Returns 2 when the table (version
    // row) was restored, 1 when only rows were re-inserted, 0 when nothing was missing.
    const string RestoreScript = """
        local current = redis.call('HGET', KEYS[1], 'Version')
        if (not current) or tonumber(current) < tonumber(ARGV[1]) then
            redis.call('HSET', KEYS[1], 'Version', ARGV[1])
            for i = 2, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
            return 2
        end
        return redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
        """;

    HashEntry[]? _mirror;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var options = redis.Clone();
        options.AbortOnConnectFail = false;
        using var connection = await ConnectionMultiplexer.ConnectAsync(options);
        var db = connection.GetDatabase();
        using var timer = new PeriodicTimer(period);
        bool failing = false;
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await CheckAsync(db);
                    if (failing) LogStoreReachable(logger);
                    failing = false;
                }
                catch (Exception e) when (e is RedisException or TimeoutException)
                {
                    if (!failing) LogStoreUnreachable(logger, e.Message);
                    failing = true;
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
    }

    async Task CheckAsync(IDatabase db)
    {
        var rows = await db.HashGetAllAsync(table);
        bool hasVersion = rows.Any(r => r.Name == VersionField);
        bool hasOwn = rows.Any(r => r.Name == ownField);
        if (hasVersion && hasOwn)
        {
            _mirror = rows;
            return;
        }
        // Not joined yet (no mirror holding this silo's row): nothing of ours to restore.
        if (_mirror is not { } mirror || !mirror.Any(r => r.Name == ownField)) return;
        var version = mirror.First(r => r.Name == VersionField).Value;
        var own = mirror.First(r => r.Name == ownField);
        var args = new List<RedisValue> { version, own.Name, own.Value };
        foreach (var r in mirror)
            if (r.Name != VersionField && r.Name != ownField) { args.Add(r.Name); args.Add(r.Value); }
        var result = (int)await db.ScriptEvaluateAsync(RestoreScript, [table], [.. args]);
        if (result == 2) LogRestoredTable(logger, mirror.Length - 1, version.ToString());
        else if (result == 1) LogReinsertedOwnRow(logger, ownField);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "membership store: the Redis membership table was lost (Redis restarted empty?); restored the {Rows} rows this silo last saw at table version {Version}")]
    static partial void LogRestoredTable(ILogger logger, int rows, string version);

    [LoggerMessage(Level = LogLevel.Warning, Message = "membership store: this silo's row {Row} was missing from the Redis membership table; re-inserted it")]
    static partial void LogReinsertedOwnRow(ILogger logger, string row);

    [LoggerMessage(Level = LogLevel.Warning, Message = "membership store: Redis unreachable ({Error}); serving continues, membership changes wait for it")]
    static partial void LogStoreUnreachable(ILogger logger, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "membership store: Redis reachable again")]
    static partial void LogStoreReachable(ILogger logger);
}
