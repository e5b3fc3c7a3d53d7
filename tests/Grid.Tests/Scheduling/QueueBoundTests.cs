using Grid.Configuration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>The bounded waiting queue: past MaxWaiting a request is refused at once; one that waits past MaxQueueSeconds leaves.</summary>
public sealed class QueueBoundTests
{
    static GenerationRequest Request(int first, int maxTokens) => new()
    {
        PromptIds = [first, 2, 3],
        MaxTokens = maxTokens,
        Sampling = new SamplingParams { Temperature = 1, Seed = first },
    };

    [Fact]
    public async Task AFullQueueRefusesNewRequestsAtOnceAndTakesThemAgainWhenItEmpties()
    {
        var executor = new FakeExecutor(4, 1000);
        executor.Gate();
        await using var loop = new EngineLoop(executor, new SchedulerOptions { MaxRunningSequences = 1, MaxWaiting = 2, MaxQueueSeconds = 0 },
            NullLogger<EngineLoop>.Instance, contextLength: 1 << 20, firstSequenceId: 1);
        var running = loop.Submit(Request(10, 3), CancellationToken.None);
        executor.AllowSteps(1);
        Assert.True(await running.WaitToReadAsync());                       // admitted and stepping
        var waiting = new[] { loop.Submit(Request(20, 3), CancellationToken.None), loop.Submit(Request(30, 3), CancellationToken.None) };
        var full = Assert.Throws<QueueFullException>(() => loop.Submit(Request(40, 3), CancellationToken.None));
        Assert.Contains("2 requests are already waiting", full.Message);
        Assert.True(full.RetryAfterSeconds >= 1);
        // The choices of one request enter together or not at all.
        Assert.Throws<QueueFullException>(() => loop.SubmitAll([Request(50, 3), Request(51, 3)], [CancellationToken.None, CancellationToken.None]));

        executor.Ungate();
        foreach (var r in waiting.Prepend(running))
            await foreach (var _ in r.ReadAllAsync()) { }
        // Empty again: new requests are taken.
        var later = loop.Submit(Request(60, 2), CancellationToken.None);
        var events = new List<GenerationEvent>();
        await foreach (var e in later.ReadAllAsync()) events.Add(e);
        Assert.Equal(new FinishedEvent("length", 3, 2), events[^1]);
    }

    [Fact]
    public async Task ARequestThatWaitsPastTheQueueTimeIsRefused()
    {
        var executor = new FakeExecutor(4, 1000);
        executor.Gate();
        await using var loop = new EngineLoop(executor, new SchedulerOptions { MaxRunningSequences = 1, MaxWaiting = 8, MaxQueueSeconds = 2 },
            NullLogger<EngineLoop>.Instance, contextLength: 1 << 20, firstSequenceId: 1);
        var running = loop.Submit(Request(10, 50), CancellationToken.None);
        executor.AllowSteps(1);
        Assert.True(await running.WaitToReadAsync());
        var waiting = loop.Submit(Request(20, 3), CancellationToken.None);
        // The engine is held inside a step, so the second cannot be admitted; let it wait past the bound.
        await Task.Delay(TimeSpan.FromSeconds(2.5));
        executor.Ungate();                                                   // the loop comes round and finds it waited too long
        var refused = await Assert.ThrowsAsync<QueueFullException>(async () => { await foreach (var _ in waiting.ReadAllAsync()) { } });
        Assert.Contains("waited", refused.Message);
        await foreach (var _ in running.ReadAllAsync()) { }                 // the running one is untouched
    }
}
