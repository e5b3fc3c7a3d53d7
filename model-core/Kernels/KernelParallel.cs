namespace Grid.ModelCore.Kernels;

/// <summary>
/// Spreads kernel work items over the cores. Work items touch plain memory only (never libtorch): the calling
/// (inference) thread takes part, the rest run on the thread pool.
/// </summary>
public static class KernelParallel
{
    /// <summary>Threads the kernels use (default: every core).</summary>
    public static int Threads { get; set; } = Environment.ProcessorCount;

    public static void For(int items, Action<int> body)
    {
        if (items <= 0) return;
        if (items == 1 || Threads <= 1)
        {
            for (int i = 0; i < items; i++) body(i);
            return;
        }
        Parallel.For(0, items, new ParallelOptions { MaxDegreeOfParallelism = Threads }, body);
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
}
