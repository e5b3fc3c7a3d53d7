using Grid.ModelCore.Kernels;
using Xunit;

namespace Grid.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class KernelThreadsCollection
{
    public const string Name = "kernel threads (one parallel call runs at a time per process)";
}

/// <summary>
/// <see cref="KernelParallel"/>'s own kernel threads: every item of a call runs exactly once whatever the item count,
/// a call's items really run on two threads at once, an item's exception reaches the caller without losing the other
/// items or breaking the next call, and calls made at the same time from other threads (or from inside an item) all
/// complete. Run with no other test, so a call finds the kernel threads free.
/// </summary>
[Collection(KernelThreadsCollection.Name)]
public sealed class KernelParallelTests
{
    /// <summary>Sets <see cref="KernelParallel.Threads"/> to at least two for the test and back afterwards.</summary>
    sealed class TwoThreads : IDisposable
    {
        readonly int _before = KernelParallel.Threads;
        public TwoThreads() => KernelParallel.Threads = Math.Max(2, _before);
        public void Dispose() => KernelParallel.Threads = _before;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(7)]
    [InlineData(100)]
    [InlineData(10_007)]
    public void EveryItemRunsExactlyOnce(int items)
    {
        using var threads = new TwoThreads();
        for (int call = 0; call < 20; call++)
        {
            var runs = new int[items];
            KernelParallel.For(items, i => Interlocked.Increment(ref runs[i]));
            Assert.All(runs, r => Assert.Equal(1, r));
        }
    }

    [Fact]
    public void JobItemsMapToTheirJobsOnce()
    {
        using var threads = new TwoThreads();
        int[] sizes = [3, 0, 17, 1, 250];
        var runs = sizes.Select(n => new int[n]).ToArray();
        KernelParallel.ForJobItems(sizes.Length, j => sizes[j], (j, i) => Interlocked.Increment(ref runs[j][i]));
        foreach (var job in runs) Assert.All(job, r => Assert.Equal(1, r));
    }

    [Fact]
    public void TwoItemsRunOnTwoThreadsAtOnce()
    {
        using var threads = new TwoThreads();
        // Each item waits for the other to start: only two threads running at the same time get both past the barrier.
        // Repeated so that both a sleeping kernel thread (first call) and a polling one (the next calls) take part.
        for (int call = 0; call < 50; call++)
        {
            using var barrier = new Barrier(2);
            var passed = new bool[2];
            var ids = new int[2];
            KernelParallel.For(2, i =>
            {
                ids[i] = Environment.CurrentManagedThreadId;
                passed[i] = barrier.SignalAndWait(TimeSpan.FromMinutes(2));
            });
            Assert.True(passed[0] && passed[1], $"call {call}: the two items did not run at the same time");
            Assert.NotEqual(ids[0], ids[1]);
        }
    }

    [Fact]
    public void AnItemsExceptionReachesTheCallerAfterTheOtherItemsAndTheNextCallWorks()
    {
        using var threads = new TwoThreads();
        var runs = new int[64];
        var error = Assert.Throws<AggregateException>(() => KernelParallel.For(64, i =>
        {
            Interlocked.Increment(ref runs[i]);
            if (i == 5) throw new InvalidOperationException("item 5 failed");
        }));
        Assert.Equal("item 5 failed", Assert.IsType<InvalidOperationException>(Assert.Single(error.InnerExceptions)).Message);
        Assert.All(runs, r => Assert.Equal(1, r));
        var again = new int[64];
        KernelParallel.For(64, i => Interlocked.Increment(ref again[i]));
        Assert.All(again, r => Assert.Equal(1, r));
    }

    [Fact]
    public void CallsFromSeveralThreadsAndFromInsideAnItemAllComplete()
    {
        using var threads = new TwoThreads();
        const int callers = 4, calls = 200, items = 37;
        var sums = new long[callers];
        var workers = Enumerable.Range(0, callers).Select(c => new Thread(() =>
        {
            for (int n = 0; n < calls; n++)
                KernelParallel.For(items, i =>
                {
                    Interlocked.Add(ref sums[c], i);
                    if (i == 0) KernelParallel.For(3, j => Interlocked.Add(ref sums[c], 1000));   // a call inside an item
                });
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        long expected = calls * ((long)items * (items - 1) / 2 + 3000);
        Assert.All(sums, s => Assert.Equal(expected, s));
    }
}
