using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>One choice of a request: its prompt, its sequence in the scheduler and what it produced so far.</summary>
public sealed class ChoiceRun(int index, int[] promptIds, GenerationRequest request, CompletionBuilder builder, bool echo, CancellationToken requestAborted) : IDisposable
{
    public int Index { get; } = index;
    public int[] PromptIds { get; } = promptIds;
    public GenerationRequest Request { get; } = request;
    public CompletionBuilder Builder { get; } = builder;
    public bool Echo { get; } = echo;
    /// <summary>Cancels this choice's sequence: on a stop string, or when the client goes away (linked).</summary>
    public CancellationTokenSource Cancel { get; } = CancellationTokenSource.CreateLinkedTokenSource(requestAborted);
    /// <summary>Legacy logprobs text offset of the next token (streaming fragments).</summary>
    public int TextOffset { get; set; }
    public bool Finished { get; set; }
    public void Dispose() => Cancel.Dispose();
}

public abstract record ChoiceUpdate(ChoiceRun Choice);
/// <summary>Echo: the prompt's text, with its legacy logprobs when asked.</summary>
public sealed record EchoUpdate(ChoiceRun Choice, string Text, JsonObject? Logprobs) : ChoiceUpdate(Choice);
/// <summary>A generated token: the text it completed (may be empty) and its logprobs in the form asked.</summary>
public sealed record TokenUpdate(ChoiceRun Choice, string Delta, SampledToken Token, JsonObject? LegacyLogprobs, JsonObject? ChatLogprobs) : ChoiceUpdate(Choice);
public sealed record FinishUpdate(ChoiceRun Choice, string Delta, string Reason) : ChoiceUpdate(Choice);

/// <summary>
/// Runs a request's choices through the scheduler and merges their events into one ordered stream of updates.
/// A choice whose text hits a stop string is cancelled at once, freeing its latent cache.
/// </summary>
public sealed class GenerationRunner(ServingEngine engine, GridTelemetry telemetry)
{
    public async IAsyncEnumerable<ChoiceUpdate> RunAsync(IReadOnlyList<ChoiceRun> choices, bool legacyLogprobs, bool chatLogprobs, bool tokensAsIds,
        long startTimestamp, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var scheduler = engine.Loop ?? throw new InvalidOperationException("the model is not loaded");
        var tokenizer = engine.Tokenizer!;
        var merged = Channel.CreateUnbounded<ChoiceUpdate>(new UnboundedChannelOptions { SingleReader = true });
        var pumps = choices.Select(c => PumpAsync(c)).ToArray();
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

        async Task PumpAsync(ChoiceRun c)
        {
            await Task.Yield();
            if (c.Echo && !c.Request.PromptLogprobs)
            {
                c.Builder.Echo(c.PromptIds, null);
                merged.Writer.TryWrite(new EchoUpdate(c, c.Builder.Text, null));
            }
            long last = 0;
            var reader = scheduler.Submit(c.Request, c.Cancel.Token);
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
