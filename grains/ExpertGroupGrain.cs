using Grid.Grains.Contracts;
using Grid.Grains.Hosting;
using Grid.Grains.Placement;
using Grid.ModelCore.Model;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace Grid.Grains;

/// <summary>
/// Runs one expert group's routed experts for the bundled tokens of a MoE layer. The work is in model-core. Placed on a
/// silo that declares the group, or else on an elastic silo, which starts loading the group's tensors when the grain
/// activates there; calls wait for that load and <see cref="GetStatusAsync"/> reports ready once it is done.
/// </summary>
[ExpertGroupPlacement, Reentrant]
public sealed class ExpertGroupGrain(ModelHost host, SiloTelemetry telemetry) : Grain, IExpertGroupGrain
{
    int Group => (int)this.GetPrimaryKeyLong();

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        // Start the load now (an elastic silo taking on a group it did not declare), without holding up activation:
        // a large group may take longer than an activation may. Failures are logged by the host and seen by the calls.
        if (!host.Options.ExpertGroups.Contains(Group) && host.Options.Elastic)
            host.EnsureGroupAsync(Group, CancellationToken.None).ContinueWith(static t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
        return Task.CompletedTask;
    }

    public async Task<TensorPayload> ForwardAsync(ExpertRequest request, CancellationToken cancellationToken = default)
    {
        var range = host.GroupRanges[Group];
        var tag = new KeyValuePair<string, object?>("group", Group);
        telemetry.ExpertCalls.Add(1, tag);
        telemetry.ExpertTokens.Add(request.Input.Rows, tag);
        await host.EnsureGroupAsync(Group, cancellationToken);
        return await host.RunAsync(model =>
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var experts = model.ExpertGroups.FirstOrDefault(g => g.Range == range)
                ?? throw new InvalidOperationException($"expert group {Group} ({range}) is not loaded on this silo");
            using var scope = NewDisposeScope();
            // Hidden states may travel in 16 bits: widened to the compute dtype here, the output narrowed back to the request's.
            var x = request.Input.ToTensor(host.Dtype);
            var routing = new Routing(request.Input.Rows, request.TopK, request.ExpertIds, request.Weights);
            var output = experts.Forward(request.Layer, x, routing).ToPayload(request.Input.Dtype);
            telemetry.ComputeMs.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("kind", "experts"));
            return output;
        }, cancellationToken);
    }

    public Task<HostStatus> GetStatusAsync(CancellationToken cancellationToken = default) =>
        Task.FromResult(new HostStatus(host.HoldsGroup(Group), RuntimeIdentity, host.Detail));
}
