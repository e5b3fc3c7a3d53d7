using Grid.Configuration;
using StackExchange.Redis;

namespace Grid.Grains.Hosting;

/// <summary>
/// One line that says why a silo (or the gateway's cluster client) could not start or join, for <c>error: ...</c> on
/// stderr: the Redis membership store refused the password or cannot be reached, or the silo could not reach the
/// cluster's silos (with cluster TLS, a certificate that is missing or not from the cluster CA looks like this).
/// </summary>
public static class SiloStartFailure
{
    public static string Describe(Exception failure, GridClusterOptions cluster)
    {
        var all = Flatten(failure).ToList();
        if (all.OfType<RedisConnectionException>().FirstOrDefault() is { } redis)
        {
            if (redis.FailureType == ConnectionFailureType.AuthenticationFailure || all.Any(e => e.Message.Contains("WRONGPASS") || e.Message.Contains("NOAUTH")))
                return string.IsNullOrEmpty(cluster.RedisPassword) && !cluster.Redis.Contains("password=", StringComparison.OrdinalIgnoreCase)
                    ? $"the Redis membership store at {cluster.Redis} requires a password and none is set (Grid:Cluster:RedisPassword)"
                    : $"the Redis membership store at {cluster.Redis} refused the password (Grid:Cluster:RedisPassword is wrong)";
            return $"cannot reach the Redis membership store at {cluster.Redis} ({redis.FailureType}): {FirstLine(redis.Message)}";
        }
        if (all.Any(e => e.GetType().Name.Contains("ConnectivityCheckFailed", StringComparison.Ordinal) || e.Message.Contains("join", StringComparison.OrdinalIgnoreCase)))
            return JoinFailure(cluster, $"the cluster's silos did not answer it within {cluster.MaxJoinSeconds:0.#} s (Grid:Cluster:MaxJoinSeconds). {FirstLine(failure.Message)}");
        var root = all[^1];
        return $"{root.GetType().Name}: {FirstLine(root.Message)}";
    }

    /// <summary>"could not join cluster 'id': {why}; {what cluster TLS says about it}".</summary>
    public static string JoinFailure(GridClusterOptions cluster, string why)
    {
        var tls = cluster.Tls.IsEnabled
            ? $"cluster TLS is on here (certificate {cluster.Tls.CertificatePath}): the other silos must use TLS and a certificate from the same cluster CA"
            : "cluster TLS is off here (Grid:Cluster:Tls:CertificatePath): if the cluster uses TLS, this silo needs a certificate from the cluster CA";
        return $"could not join cluster '{cluster.ClusterId}': {why}; {tls}";
    }

    static IEnumerable<Exception> Flatten(Exception e)
    {
        yield return e;
        var inner = e is AggregateException a ? a.InnerExceptions : e.InnerException is { } i ? [i] : (IEnumerable<Exception>)[];
        foreach (var x in inner)
            foreach (var y in Flatten(x)) yield return y;
    }

    static string FirstLine(string message) => message.Split('\n')[0].Trim();
}
