using System.Diagnostics;

namespace Grid.Tests;

/// <summary>
/// Waits for a state, not for a time: reads a value until a condition holds or a generous deadline passes. Tests
/// use it instead of fixed sleeps, so they hold on a fast machine and on a slow, loaded one alike.
/// </summary>
public static class Poll
{
    /// <summary>How long a state may take to arrive before a test gives up (long: a loaded CI machine is slow).</summary>
    public static readonly TimeSpan Deadline = TimeSpan.FromMinutes(5);

    /// <summary>Reads until <paramref name="done"/> holds or the deadline passes; returns the last value read (the caller asserts on it).</summary>
    public static async Task<T> UntilAsync<T>(Func<Task<T>> read, Func<T, bool> done, TimeSpan? deadline = null)
    {
        var clock = Stopwatch.StartNew();
        var limit = deadline ?? Deadline;
        var value = await read();
        for (int attempt = 0; !done(value) && clock.Elapsed < limit; attempt++)
        {
            await Task.Delay(Math.Min(20 << Math.Min(attempt, 4), 250));   // 20 ms at first, then up to 250 ms
            value = await read();
        }
        return value;
    }

    /// <summary>Waits until <paramref name="done"/> answers true; a <see cref="TimeoutException"/> naming <paramref name="what"/> otherwise.</summary>
    public static async Task UntilAsync(Func<Task<bool>> done, string what, TimeSpan? deadline = null)
    {
        if (!await UntilAsync(done, d => d, deadline))
            throw new TimeoutException($"{what}: not within {(deadline ?? Deadline).TotalSeconds:F0} s");
    }
}
