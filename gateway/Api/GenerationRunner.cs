using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Api;

/// <summary>
/// Runs a request's choices through the scheduler and merges their events into one ordered stream of updates.
/// A choice whose text hits a stop string is cancelled at once, freeing its latent cache.
/// </summary>
public sealed class GenerationRunner(ServingEngine engine, GridTelemetry telemetry)
{
    /// <summary>
    /// Queues every choice now, together or not at all (<see cref="QueueFullException"/>, a 429, thrown here, before
    /// the caller writes anything), and returns their merged updates.
    /// </summary>
    public IAsyncEnumerable<ChoiceUpdate> RunAsync(IReadOnlyList<ChoiceRun> choices, bool legacyLogprobs, bool chatLogprobs, bool tokensAsIds,
        long startTimestamp, CancellationToken cancellationToken)
    {
        var scheduler = engine.Loop ?? throw new InvalidOperationException("the model is not loaded");
        var timelines = choices.Select(_ => new SequenceTimeline()).ToArray();
        var readers = scheduler.SubmitAll(choices.Select((c, i) => c.Request with { Timeline = timelines[i] }).ToArray(), choices.Select(c => c.Cancel.Token).ToArray());
        return MergeAsync(choices, readers, timelines, legacyLogprobs, chatLogprobs, tokensAsIds, startTimestamp, cancellationToken);
    }

    async IAsyncEnumerable<ChoiceUpdate> MergeAsync(IReadOnlyList<ChoiceRun> choices, ChannelReader<GenerationEvent>[] readers, SequenceTimeline[] timelines,
        bool legacyLogprobs, bool chatLogprobs, bool tokensAsIds, long startTimestamp, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var tokenizer = engine.Tokenizer!;
        var merged = Channel.CreateUnbounded<ChoiceUpdate>(new UnboundedChannelOptions { SingleReader = true });
        var firstTokenAt = new long[choices.Count];
        var pumps = choices.Select((c, i) => PumpAsync(c, i, readers[i])).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t =>
        {
            if (t.IsCompletedSuccessfully && choices.All(c => c.Finished)) RecordFinished();
            merged.Writer.TryComplete(t.Exception?.InnerException);
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            await foreach (var update in merged.Reader.ReadAllAsync(cancellationToken)) yield return update;
        }
        finally
        {
            foreach (var c in choices) c.Cancel.Cancel();   // whatever still runs (client gone, writer failed) leaves the batch
        }

        // vLLM's per-request metrics, for a request whose choices all finished (not cancelled, not failed): queue time
        // (until the first choice was admitted), prefill time (from then to the first token), end to end, token counts.
        void RecordFinished()
        {
            long end = Stopwatch.GetTimestamp();
            var admitted = timelines.Select(t => t.AdmittedAt).Where(a => a != 0).DefaultIfEmpty(0).Min();
            var queued = timelines.Select(t => t.QueuedAt).Where(q => q != 0).DefaultIfEmpty(startTimestamp).Min();
            var first = firstTokenAt.Where(f => f != 0).DefaultIfEmpty(0).Min();
            if (admitted != 0)
            {
                telemetry.RequestQueueTime.Record(Stopwatch.GetElapsedTime(queued, admitted).TotalSeconds);
                if (first != 0) telemetry.RequestPrefillTime.Record(Stopwatch.GetElapsedTime(admitted, first).TotalSeconds);
            }
            telemetry.EndToEndLatency.Record(Stopwatch.GetElapsedTime(startTimestamp, end).TotalSeconds);
            telemetry.RequestPromptTokens.Record(choices[0].PromptIds.Length);
            telemetry.RequestGenerationTokens.Record(choices.Sum(c => (long)c.Builder.CompletionTokens));
        }

        void Finished(string reason) => telemetry.RequestSuccess.Add(1, new KeyValuePair<string, object?>("finish_reason", reason));

        async Task PumpAsync(ChoiceRun c, int index, ChannelReader<GenerationEvent> reader)
        {
            await Task.Yield();
            if (c.Echo && !c.Request.PromptLogprobs)
            {
                c.Builder.Echo(c.PromptIds, null);
                merged.Writer.TryWrite(new EchoUpdate(c, c.Builder.Text, null));
            }
            long last = 0;
            try
            {
                await foreach (var ev in reader.ReadAllAsync(cancellationToken))
                {
                    if (c.Finished) continue;
                    switch (ev)
                    {
                        case PromptLogprobsEvent p when c.Echo:
                        {
                            c.Builder.Echo(c.PromptIds, p.Tokens);
                            JsonObject? fragment = null;
                            if (legacyLogprobs)
                            {
                                var lp = new LegacyLogprobs(tokenizer, tokensAsIds);
                                for (int i = 0; i < c.PromptIds.Length; i++)
                                {
                                    int len = tokenizer.TokenText(c.PromptIds[i]).Length;
                                    lp.Add(c.PromptIds[i], p.Tokens[i], len);
                                    c.TextOffset += len;
                                }
                                fragment = lp.ToJson();
                            }
                            merged.Writer.TryWrite(new EchoUpdate(c, c.Builder.Text, fragment));
                            break;
                        }
                        case TokenEvent t:
                        {
                            int before = c.Builder.CompletionTokens;
                            var delta = c.Builder.Add(t);
                            if (c.Builder.CompletionTokens == before) break;
                            long now = Stopwatch.GetTimestamp();
                            if (last == 0)
                            {
                                telemetry.TimeToFirstToken.Record(Stopwatch.GetElapsedTime(startTimestamp, now).TotalSeconds);
                                firstTokenAt[index] = now;
                            }
                            else telemetry.InterTokenLatency.Record(Stopwatch.GetElapsedTime(last, now).TotalSeconds);
                            last = now;
                            telemetry.GenerationTokens.Add(1);
                            JsonObject? legacy = null;
                            int len = tokenizer.TokenText(t.Token.Token).Length;
                            if (legacyLogprobs)
                            {
                                var lp = new LegacyLogprobs(tokenizer, tokensAsIds);
                                lp.StartAt(c.TextOffset);
                                lp.Add(t.Token.Token, t.Token, len);
                                legacy = lp.ToJson();
                            }
                            c.TextOffset += len;
                            var chat = chatLogprobs ? c.Builder.LogprobRenderer.ChatEntry(t.Token) : null;
                            merged.Writer.TryWrite(new TokenUpdate(c, delta, t.Token, legacy, chat));
                            if (c.Builder.FinishReason is { } reason)
                            {
                                // A stop string: the text is complete; cancel the sequence so its cache is freed now.
                                c.Finished = true;
                                c.Cancel.Cancel();
                                Finished(reason);
                                merged.Writer.TryWrite(new FinishUpdate(c, "", reason));
                            }
                            break;
                        }
                        case FinishedEvent f:
                        {
                            var delta = c.Builder.Add(f);
                            c.Finished = true;
                            Finished(c.Builder.FinishReason ?? f.Reason);
                            merged.Writer.TryWrite(new FinishUpdate(c, delta, c.Builder.FinishReason ?? f.Reason));
                            break;
                        }
                    }
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { }
        }
    }
}
