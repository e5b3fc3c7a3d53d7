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
}
