using System.Collections.Concurrent;
using TorchSharp;

namespace Grid.ModelCore.Runtime;

/// <summary>
/// One dedicated thread that runs every tensor computation of a host. TorchSharp's dispose scopes and grad
/// mode are thread-local, so work items are synchronous functions that open their own
/// <c>NewDisposeScope()</c>; callers only await the returned task.
/// </summary>
public sealed class InferenceThread : IDisposable
{
    readonly BlockingCollection<Action> _queue = new();
    readonly Thread _thread;

    public InferenceThread(string name = "grid-inference", int? torchThreads = null)
    {
        _thread = new Thread(() => Loop(torchThreads)) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public bool IsCurrentThread => Thread.CurrentThread == _thread;

    void Loop(int? torchThreads)
    {
        if (torchThreads is int n && n > 0)
        {
            torch.set_num_threads(n);
            // The C# kernels follow the same limit: silos sharing a box each get their share of the cores.
            Grid.ModelCore.Kernels.KernelParallel.Threads = n;
        }
        using var noGrad = torch.no_grad();
        foreach (var work in _queue.GetConsumingEnumerable()) work();
    }

    /// <summary>Runs <paramref name="work"/> on the inference thread; completes with its result or exception.</summary>
    public Task<T> RunAsync<T>(Func<T> work, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (IsCurrentThread) return Task.FromResult(work());
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _queue.Add(() =>
        {
            if (cancellationToken.IsCancellationRequested) { tcs.TrySetCanceled(cancellationToken); return; }
            try { tcs.TrySetResult(work()); }
            catch (Exception e) { tcs.TrySetException(e); }
        }, CancellationToken.None);
        return tcs.Task;
    }

    public Task RunAsync(Action work, CancellationToken cancellationToken = default) =>
        RunAsync<bool>(() => { work(); return true; }, cancellationToken);

    public void Dispose()
    {
        _queue.CompleteAdding();
        if (!IsCurrentThread) _thread.Join();
        _queue.Dispose();
    }
}
