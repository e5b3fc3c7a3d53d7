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
        var readers = scheduler.SubmitAll(choices.Select(c => c.Request).ToArray(), choices.Select(c => c.Cancel.Token).ToArray());
        return MergeAsync(choices, readers, legacyLogprobs, chatLogprobs, tokensAsIds, startTimestamp, cancellationToken);
    }

    async IAsyncEnumerable<ChoiceUpdate> MergeAsync(IReadOnlyList<ChoiceRun> choices, ChannelReader<GenerationEvent>[] readers, bool legacyLogprobs,
        bool chatLogprobs, bool tokensAsIds, long startTimestamp, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var tokenizer = engine.Tokenizer!;
        var merged = Channel.CreateUnbounded<ChoiceUpdate>(new UnboundedChannelOptions { SingleReader = true });
        var pumps = choices.Select((c, i) => PumpAsync(c, readers[i])).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t => merged.Writer.TryComplete(t.Exception?.InnerException),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            await foreach (var update in merged.Reader.ReadAllAsync(cancellationToken)) yield return update;
        }
        finally
        {
            foreach (var c in choices) c.Cancel.Cancel();   // whatever still runs (client gone, writer failed) leaves the batch
        }

        async Task PumpAsync(ChoiceRun c, ChannelReader<GenerationEvent> reader)
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
                            if (last == 0) telemetry.TimeToFirstToken.Record(Stopwatch.GetElapsedTime(startTimestamp, now).TotalSeconds);
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
                                merged.Writer.TryWrite(new FinishUpdate(c, "", reason));
                            }
                            break;
                        }
                        case FinishedEvent f:
                        {
                            var delta = c.Builder.Add(f);
                            c.Finished = true;
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
