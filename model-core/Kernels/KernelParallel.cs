using System.Diagnostics;

namespace Grid.ModelCore.Kernels;

/// <summary>
/// Spreads kernel work items over the cores. Work items touch plain memory only (never libtorch): the calling
/// (inference) thread takes part, and <see cref="Threads"/> - 1 dedicated kernel threads take the rest.
/// <para>A decode step makes ~10 parallel calls per layer with libtorch work or other kernels' set-up in between.
/// Through the thread pool each call woke a sleeping worker: an empty two-thread call measured ~9 µs after a 100 µs gap
/// and ~100 µs after a 500 µs one (a halted vCPU takes that long to wake). So the kernel threads poll for the next
/// call for <see cref="SpinMicroseconds"/> after each one before they block, and items are handed out in contiguous,
/// shrinking chunks (<see cref="Call"/>). Which thread runs an item never changes its result: the kernels give the same bits for any split.</para>
/// <para>One call runs at a time; a call made while another is running (a second inference thread in the process, or
/// a kernel calling back in) runs its items on its own thread.</para>
/// </summary>
public static class KernelParallel
{
    /// <summary>Threads the kernels use (default: every core).</summary>
    public static int Threads { get; set; } = Environment.ProcessorCount;

    /// <summary>How long an idle kernel thread polls for the next call before it blocks.</summary>
    public static int SpinMicroseconds { get; set; } = 200;

    /// <summary>One parallel call: its items, handed out in contiguous chunks by <see cref="_next"/> ("guided": a chunk is
    /// the remaining items over twice the threads, so the chunks shrink towards the end and the threads finish
    /// together), and how many have finished. A thread's consecutive items read consecutive weights, and the counters
    /// are touched once per chunk.</summary>
    sealed class Call(Action<int> body, int items, int threads)
    {
        public readonly Action<int> Body = body;
        public readonly int Items = items;
        readonly int _threads = threads;
        public Exception? Error;
        PaddedCounter _next, _done;

        public int Done => Volatile.Read(ref _done.Value);

        /// <summary>Runs chunks of items until none are left.</summary>
        public void Work()
        {
            while (true)
            {
                int first = Volatile.Read(ref _next.Value);
                if (first >= Items) return;
                int end = Math.Min(Items, first + Math.Max(1, (Items - first) / (2 * _threads)));
                if (Interlocked.CompareExchange(ref _next.Value, end, first) != first) continue;
                for (int i = first; i < end; i++)
                {
                    try { Body(i); }
                    catch (Exception e) { Interlocked.CompareExchange(ref Error, e, null); }
                }
                Interlocked.Add(ref _done.Value, end - first);
            }
        }
    }

    /// <summary>A counter alone on its cache line (the threads update the two counters from different cores).</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 128)]
    struct PaddedCounter
    {
        [System.Runtime.InteropServices.FieldOffset(64)] public int Value;
    }

    static readonly object s_start = new();
    static readonly List<Worker> s_workers = [];
    static Call? s_current;     // the call the kernel threads join (null between calls)
    static int s_busy;          // 1 while a call runs

    public static void For(int items, Action<int> body)
    {
        if (items <= 0) return;
        int helpers = Math.Min(Threads, items) - 1;
        if (helpers <= 0 || Interlocked.CompareExchange(ref s_busy, 1, 0) != 0)
        {
            for (int i = 0; i < items; i++) body(i);
            return;
        }
        var call = new Call(body, items, helpers + 1);
        try
        {
            EnsureWorkers(helpers);
            Volatile.Write(ref s_current, call);
            for (int w = 0; w < helpers; w++) s_workers[w].Wake();
            call.Work();
            // Wait for items still running on the kernel threads (each one at most the rest of its chunk).
            var spin = new SpinWait();
            while (call.Done < items) spin.SpinOnce(sleep1Threshold: -1);
        }
        finally
        {
            Volatile.Write(ref s_current, null);
            Volatile.Write(ref s_busy, 0);
        }
        if (call.Error is { } error) throw new AggregateException(error);
    }

    /// <summary>
    /// Work items of several jobs in one parallel loop: job j has <paramref name="itemsOf"/>(j) items, and
    /// <paramref name="body"/>(j, i) runs item i (0-based within job j) of every job, all of them spread over the cores.
    /// </summary>
    public static void ForJobItems(int jobs, Func<int, int> itemsOf, Action<int, int> body)
    {
        var firstItem = new int[jobs + 1];
        for (int j = 0; j < jobs; j++) firstItem[j + 1] = firstItem[j] + itemsOf(j);
        int items = firstItem[jobs];
        var itemJob = new int[items];
        for (int j = 0; j < jobs; j++)
            for (int i = firstItem[j]; i < firstItem[j + 1]; i++) itemJob[i] = j;
        For(items, item =>
        {
            int j = itemJob[item];
            body(j, item - firstItem[j]);
        });
    }

    static void EnsureWorkers(int count)
    {
        if (s_workers.Count >= count) return;
        lock (s_start)
            while (s_workers.Count < count) s_workers.Add(new Worker(s_workers.Count + 1));
    }

    /// <summary>A kernel thread: joins each call it sees, polls for the next one for a while, then blocks until woken.</summary>
    sealed class Worker
    {
        readonly SemaphoreSlim _wake = new(0);
        int _sleeping;
        Call? _last;

        public Worker(int index) =>
            new Thread(Loop) { IsBackground = true, Name = $"grid-kernel-{index}" }.Start();

        public void Wake()
        {
            if (Interlocked.Exchange(ref _sleeping, 0) == 1) _wake.Release();
        }

        void Loop()
        {
            while (true)
            {
                if (Volatile.Read(ref s_current) is { } call && call != _last)
                {
                    _last = call;
                    call.Work();
                    continue;
                }
                long deadline = Stopwatch.GetTimestamp() + SpinMicroseconds * Stopwatch.Frequency / 1_000_000;
                var seen = _last;
                while (Stopwatch.GetTimestamp() < deadline)
                {
                    if (Volatile.Read(ref s_current) is { } next && next != seen) break;
                    Thread.SpinWait(20);
                }
                if (Volatile.Read(ref s_current) is { } ready && ready != seen) continue;
                // Block; a call published after this flag is set wakes us (the caller swaps it back and releases).
                Interlocked.Exchange(ref _sleeping, 1);   // a full fence: the check below reads after this write
                if (Volatile.Read(ref s_current) is { } raced && raced != seen)
                {
                    if (Interlocked.Exchange(ref _sleeping, 0) == 0) _wake.Wait();   // the caller already released: take it
                    continue;
                }
                _wake.Wait();
            }
        }
    }
}
