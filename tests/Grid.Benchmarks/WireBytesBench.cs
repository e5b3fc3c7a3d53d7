using System.Text.Json.Nodes;
using Grid.Gateway.Hosting;
using Grid.Gateway.Orchestration;
using Grid.Grains.Contracts;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Serialization;
using static Grid.Benchmarks.Report;

namespace Grid.Benchmarks;

/// <summary>
/// Bytes one decode step puts on the wire in the grid, serialized with the cluster's own Orleans serializer: the
/// chunks sent to the shards, the hidden states between shards and expert groups, and the end-of-step results.
/// Sampling runs on the attention shard, so the results are tokens and logprobs; before, they were logit rows
/// ([B, V] float32), shown beside them serialized the same way.
/// </summary>
public static class WireBytesBench
{
    public sealed record Row(int Batch, StepWireBytes After, long LogitRowBytes)
    {
        public long Before => After.Total - After.Results + LogitRowBytes;
    }

    public static Task<List<Row>> MeasureAsync(BenchContext c, GridConnection grid, int[] batches, int promptTokens, CancellationToken ct) =>
        MeasureAsync(c, grid.Executor, grid.Services, batches, promptTokens, ct);

    public static async Task<List<Row>> MeasureAsync(BenchContext c, GridStepExecutor executor, IServiceProvider services, int[] batches, int promptTokens, CancellationToken ct)
    {
        var serializer = services.GetRequiredService<Serializer>();
        var meter = new WireMeter(serializer);
        var greedy = new TokenSampling(SamplingParams.Greedy, default);
        var rows = new List<Row>();
        long idBase = 5_000_000;
        foreach (var batch in batches)
        {
            var ids = Enumerable.Range(0, batch).Select(b => idBase + b).ToArray();
            idBase += 1000;
            try
            {
                var first = await executor.StepAsync(ids.Select((id, b) => new StepChunk(id, 0, ModelCoreBench.Prompt(executor.Config, promptTokens, b)) { Sample = greedy }).ToList(), ct);
                executor.Wire = meter;
                await executor.StepAsync(ids.Select((id, b) => new StepChunk(id, promptTokens, [first[b].Next!.Token]) { Sample = greedy }).ToList(), ct);
            }
            finally
            {
                executor.Wire = null;
                await executor.ReleaseAsync(ids, CancellationToken.None);
            }
            var logits = new TensorPayload(batch, executor.Config.VocabSize, PayloadDtype.Float32, new byte[batch * executor.Config.VocabSize * 4]);
            rows.Add(new Row(batch, meter.LastStep, meter.Size(logits)));
            c.Log($"wire: batch {batch}: {meter.LastStep.Total} bytes per decode step ({meter.LastStep.Results} of results)");
        }
        return rows;
    }

    public static void Describe(Section s, List<Row> rows, int vocab)
    {
        s.Data["wire_bytes_per_decode_step"] = new JsonArray(rows.Select(r => (JsonNode)new JsonObject
        {
            ["batch"] = r.Batch,
            ["chunks"] = r.After.Chunks,
            ["hidden_states"] = r.After.HiddenStates,
            ["results"] = r.After.Results,
            ["total"] = r.After.Total,
            ["logit_rows_before"] = r.LogitRowBytes,
            ["total_before"] = r.Before,
        }).ToArray());
        s.Markdown.Add("Bytes on the wire per decode step (embedded grid, serialized with the cluster's Orleans serializer):");
        s.Markdown.Add("");
        s.Table(["batch", "chunks", "hidden states", "results (tokens + logprobs)", "total", "before: logit rows [B, V] f32", "before: total", "after / before"],
            rows.Select(r => (IReadOnlyList<string>)[r.Batch.ToString(), r.After.Chunks.ToString(), r.After.HiddenStates.ToString(), r.After.Results.ToString(),
                r.After.Total.ToString(), r.LogitRowBytes.ToString(), r.Before.ToString(), Pct((double)r.After.Total / r.Before)]));
        var last = rows[^1];
        s.Notes.Add($"Results per sequence: {F((double)last.After.Results / last.Batch, 0)} bytes (greedy, no top logprobs) against {vocab * 4} bytes of logit row at this model's vocabulary of {vocab}; at DeepSeek-V2's 102,400 entries a logit row is 409,600 bytes per sequence per step, the results stay the same size.");
        s.Summary.Add(($"wire bytes per decode step, batch {last.Batch}: after / before (logit rows)", $"{last.After.Total} / {last.Before} ({Pct((double)last.After.Total / last.Before)})",
            "hidden states [B, d] per MoE layer to and from the expert groups; sampling on the shard leaves only tokens and logprobs"));
    }
}
