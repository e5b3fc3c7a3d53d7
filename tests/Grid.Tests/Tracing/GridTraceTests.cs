using System.Diagnostics;
using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.Tests.Cluster;
using Microsoft.Extensions.Logging.Abstractions;
using OpenTelemetry;
using OpenTelemetry.Trace;
using Xunit;

namespace Grid.Tests.Tracing;

/// <summary>A 3-silo TestingHost grid of its own (its spans and grain-call counts are its own).</summary>
public sealed class TracedCluster : GridTestCluster
{
    protected override string Checkpoint => "lite_f32";
    protected override string Name => "lite_f32_traced";
}

/// <summary>
/// One request through the engine loop on a 3-silo grid, recorded by OpenTelemetry's in-memory exporter: the request's
/// span carries the expert groups its tokens reached and the latent-cache bytes it held; every step it took part in is a
/// span linked to it; each step's grain calls (attention start, one exchange per MoE layer) are client spans beneath the
/// step, the silos' server spans beneath those, and the shard's expert-group calls beneath its exchange, all in the step's trace.
/// </summary>
public sealed class GridTraceTests(TracedCluster grid) : IClassFixture<TracedCluster>
{
    [Fact]
    public async Task StepSpansLinkToTheRequestAndParentTheGrainCallsOnTheSilos()
    {
        var spans = new List<Activity>();
        using var tracing = Sdk.CreateTracerProviderBuilder()
            .AddSource(GridTelemetry.Name, "Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application")
            .AddInMemoryExporter(spans)
            .Build();
        var expected = Golden.Load("lite_f32", Golden.Prompts[0]);
        const int maxTokens = 6;
        await using var loop = new EngineLoop(grid.Executor, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, grid.Config.MaxPositionEmbeddings);

        var generated = new List<int>();
        ActivityContext requestContext;
        using (var request = GridTelemetry.ActivitySource.StartActivity("completions", ActivityKind.Server))
        {
            Assert.NotNull(request);
            requestContext = request.Context;
            await foreach (var e in loop.Submit(new GenerationRequest { PromptIds = expected.PromptIds, MaxTokens = maxTokens, Sampling = SamplingParams.Greedy },
                               CancellationToken.None).ReadAllAsync())
                if (e is TokenEvent t) generated.Add(t.Token.Token);
        }
        Assert.Equal(expected.GeneratedIds.Take(maxTokens), generated);   // traced or not, the same tokens
        tracing.ForceFlush();

        Activity[] all;
        lock (spans) all = spans.ToArray();
        var requestSpan = Assert.Single(all, a => a.SpanId == requestContext.SpanId);

        // The request's routing: the expert groups its tokens reached, the latent cache it held, the steps it took.
        var groups = Assert.IsType<int[]>(requestSpan.GetTagItem("grid.expert_groups"));
        Assert.NotEmpty(groups);
        Assert.All(groups, g => Assert.InRange(g, 0, GridTestCluster.Groups - 1));
        var held = Assert.IsType<long>(requestSpan.GetTagItem("grid.latent_cache_bytes"));
        Assert.True(held > 0, "the request held no latent cache");
        var steps = Assert.IsType<int>(requestSpan.GetTagItem("grid.steps"));
        Assert.True(steps >= maxTokens, $"{steps} steps for {maxTokens} tokens");
        var finished = Assert.Single(requestSpan.Events, e => e.Name == "grid.choice.finished");
        Assert.Equal("length", finished.Tags.Single(t => t.Key == "finish_reason").Value);

        // Every step the request took part in is a span of its own, linked to the request.
        var stepSpans = all.Where(a => a.OperationName == "grid.step" && a.Links.Any(l => l.Context.SpanId == requestContext.SpanId)).ToArray();
        Assert.Equal(steps, stepSpans.Length);
        Assert.All(stepSpans, s => Assert.NotEqual(requestContext.TraceId, s.TraceId));   // a step is shared: its own trace
        Assert.Equal(groups, stepSpans.SelectMany(s => (int[])s.GetTagItem("grid.expert_groups")!).Distinct().Order().ToArray());

        foreach (var step in stepSpans)
        {
            // The step's grain calls are client spans beneath it, each answered by a server span on a silo beneath that.
            var calls = all.Where(a => a.ParentSpanId == step.SpanId && a.Kind == ActivityKind.Client).ToArray();
            Assert.All(calls, c => Assert.Equal(step.TraceId, c.TraceId));
            Assert.Contains(calls, c => c.DisplayName.Contains("StartStepAsync", StringComparison.Ordinal));
            var stepGroups = (int[])step.GetTagItem("grid.expert_groups")!;
            // One start call from the gateway walks the whole step (Grid:Cluster:LayersPerCall 0); the shard calls the groups
            // its silo does not hold (all but group 0 here) beneath it: one call per such group reached per MoE layer.
            int moeLayers = grid.Config.MoeLayers.Count();
            var start = Assert.Single(calls);
            Assert.Contains("StartStepAsync", start.DisplayName, StringComparison.Ordinal);
            var walk = Assert.Single(all, a => a.Kind == ActivityKind.Server && a.ParentSpanId == start.SpanId);
            var forwards = all.Where(a => a.Kind == ActivityKind.Client && a.ParentSpanId == walk.SpanId).ToArray();
            Assert.All(forwards, f => Assert.Contains("ForwardAsync", f.DisplayName, StringComparison.Ordinal));
            int remoteGroups = stepGroups.Count(g => !GridTestCluster.GroupsOfSilo[0].Contains(g));
            Assert.InRange(forwards.Length, remoteGroups, moeLayers * remoteGroups);
            foreach (var forward in forwards)
            {
                Assert.Equal(step.TraceId, forward.TraceId);
                var served = Assert.Single(all, a => a.ParentSpanId == forward.SpanId && a.Kind == ActivityKind.Server);
                Assert.Equal(step.TraceId, served.TraceId);
            }
            foreach (var call in calls)
            {
                var served = Assert.Single(all, a => a.ParentSpanId == call.SpanId && a.Kind == ActivityKind.Server);
                Assert.Equal(step.TraceId, served.TraceId);
            }
        }
    }
}
