using System.Text.Json;
using Grid.Configuration;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Grid.ModelCore.Tokenization;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;
using static Grid.Tests.Structured.JsonGrammarTests;

namespace Grid.Tests.Structured;

/// <summary>
/// Structured output where the sampling runs (an attention shard, local or on the grid): documents through the engine
/// loop, and a sequence recomputed from position 0 rebuilding its grammar state from the replayed tokens.
/// </summary>
public static class StructuredReplayChecks
{
    public static async Task EngineLoopDocumentsValidateAsync(IStepExecutor executor, string checkpoint)
    {
        using var tokenizer = GridTokenizer.Load(Golden.Dir(checkpoint));
        int eos = tokenizer.EosId!.Value;
        var prompt = tokenizer.Encode("A person as JSON:");
        await using var loop = new EngineLoop(executor, new SchedulerOptions(), NullLogger<EngineLoop>.Instance, 512);
        var runs = Enumerable.Range(1, 3).Select(async seed =>
        {
            var request = new GenerationRequest
            {
                PromptIds = prompt,
                MaxTokens = 120,
                Sampling = new SamplingParams { Temperature = 1, Seed = seed },
                StopTokenIds = [eos],
                Constraint = new TokenConstraint(ItemSchema, true, prompt.Length, 120, [eos]),
            };
            var tokens = new List<int>();
            string? finish = null;
            await foreach (var ev in loop.Submit(request, CancellationToken.None).ReadAllAsync())
                if (ev is TokenEvent t) tokens.Add(t.Token.Token);
                else if (ev is FinishedEvent f) finish = f.Reason;
            return (tokens, finish);
        }).ToArray();
        foreach (var (tokens, finish) in await Task.WhenAll(runs))
        {
            Assert.Equal("stop", finish);
            Assert.Equal(eos, tokens[^1]);
            JsonSerializer.Deserialize<Item>(tokenizer.Decode(tokens));
        }
    }

    /// <summary>
    /// Sequence A decodes k tokens one step at a time; sequence B starts at position 0 with the prompt and A's k tokens
    /// (a recompute): its shard must rebuild the grammar from the replayed tokens, so B's next draw equals A's, and both
    /// go on to the same document.
    /// </summary>
    public static async Task RecomputedSequenceReplaysItsGrammarAsync(IStepExecutor executor, string checkpoint, long firstId)
    {
        using var tokenizer = GridTokenizer.Load(Golden.Dir(checkpoint));
        int eos = tokenizer.EosId!.Value;
        var prompt = tokenizer.Encode("JSON:");
        var constraint = new TokenConstraint(ItemSchema, true, prompt.Length, 120, [eos]);
        const long seed = 11;
        TokenSampling At(int index) => new(new SamplingParams { Temperature = 1, Seed = seed }, new DrawKey(seed, 0, index));
        long a = firstId, b = firstId + 1;
        var generated = new List<int>();
        var next = (await executor.StepAsync([new StepChunk(a, 0, prompt) { Sample = At(0), Constraint = constraint }], CancellationToken.None))[0].Next!.Token;
        while (next != eos && generated.Count < 120)
        {
            generated.Add(next);
            next = (await executor.StepAsync([new StepChunk(a, prompt.Length + generated.Count - 1, [next]) { Sample = At(generated.Count) }], CancellationToken.None))[0].Next!.Token;
        }
        Assert.Equal(eos, next);
        JsonSerializer.Deserialize<Item>(tokenizer.Decode(generated));
        foreach (var k in new[] { 1, generated.Count / 2, generated.Count })
        {
            var replay = prompt.Concat(generated.Take(k)).ToArray();
            var resumed = (await executor.StepAsync([new StepChunk(b, 0, replay) { Sample = At(k), Constraint = constraint }], CancellationToken.None))[0].Next!.Token;
            Assert.Equal(k < generated.Count ? generated[k] : eos, resumed);
        }
        await executor.ReleaseAsync([a, b], CancellationToken.None);
    }
}

/// <summary>The replay checks on model-core alone (a local executor).</summary>
public sealed class StructuredLocalTests
{
    [Fact]
    public async Task LocalShardReplaysAndValidates()
    {
        await using var executor = await EngineFactory.LoadLocalAsync(Golden.Dir("lite_f32"), TorchSharp.torch.ScalarType.Float32, null, CancellationToken.None);
        await StructuredReplayChecks.RecomputedSequenceReplaysItsGrammarAsync(executor, "lite_f32", 500);
        await StructuredReplayChecks.EngineLoopDocumentsValidateAsync(executor, "lite_f32");
    }
}
