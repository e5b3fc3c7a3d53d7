using System.Net;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>Continuous batching over HTTP: concurrent streams are batched and each gets exactly its solo output.</summary>
[Collection(HttpCollection.Name)]
public sealed class ConcurrencyTests(LiteServer lite)
{
    [Fact]
    public async Task ThirtyTwoConcurrentStreamsMatchTheirSoloRunsAndAreBatched()
    {
        var rng = new Random(17);
        var requests = Enumerable.Range(0, 32).Select(i =>
        {
            var prompt = new[] { 406 }.Concat(Enumerable.Range(0, 3 + i * 2).Select(_ => rng.Next(0, 406))).ToArray();
            return (Prompt: prompt, MaxTokens: 24 + (i * 7) % 40);
        }).ToArray();
        JsonObject Body(int i, bool stream) => Json.Obj(("model", "lite_f32"), ("prompt", Json.Ids(requests[i].Prompt)),
            ("max_tokens", requests[i].MaxTokens), ("temperature", 0), ("ignore_eos", true), ("logprobs", 1),
            ("return_tokens_as_token_ids", true), ("stream", stream));
        long stepsBefore = (await lite.GetJsonAsync("/debug/steps")).AsArray().LastOrDefault()?["step"]?.GetValue<long>() ?? 0;

        var concurrent = await Task.WhenAll(Enumerable.Range(0, 32).Select(async i =>
        {
            var (chunks, done) = await lite.StreamAsync("/v1/completions", Body(i, stream: true));
            Assert.True(done);
            var ids = chunks.SelectMany(c => c["choices"]![0]!["logprobs"] is JsonObject lp ? lp["tokens"]!.AsArray().Select(Json.TokenId) : []).ToArray();
            var text = string.Concat(chunks.Select(c => c["choices"]![0]!["text"]!.GetValue<string>()));
            return (Ids: ids, Text: text);
        }));
        var steps = (await lite.GetJsonAsync("/debug/steps")).AsArray().Where(s => s!["step"]!.GetValue<long>() > stepsBefore).ToArray();

        for (int i = 0; i < 32; i++)
        {
            var (status, solo) = await lite.PostJsonAsync("/v1/completions", Body(i, stream: false));
            Assert.Equal(HttpStatusCode.OK, status);
            var choice = solo!["choices"]![0]!;
            var soloIds = choice["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId).ToArray();
            Assert.Equal(requests[i].MaxTokens, soloIds.Length);
            Assert.Equal(soloIds, concurrent[i].Ids);
            Assert.Equal(choice["text"]!.GetValue<string>(), concurrent[i].Text);
            // And the solo run is model-core's offline output (checked for a few, to keep the test short).
            if (i % 8 != 0) continue;
            var offline = await Offline.GenerateAsync("lite_f32", requests[i].Prompt, requests[i].MaxTokens, logprobs: 0);
            Assert.Equal(offline.Select(t => t.Token), soloIds);
        }
        // Batched, whatever the machine's speed: how many streams overlapped depends on how fast they arrived and ran,
        // so the test checks the scheduler's rule instead of a count: every step carries every sequence that is
        // live at that step (between its first and its last step; all prompts here fit one prefill chunk).
        var ids = steps.Select(s => s!["sequenceIds"]!.AsArray().Select(x => x!.GetValue<long>()).ToHashSet()).ToArray();
        Assert.Equal(32, ids.SelectMany(x => x).Distinct().Count());
        foreach (var id in ids.SelectMany(x => x).Distinct())
        {
            int first = Array.FindIndex(ids, x => x.Contains(id)), last = Array.FindLastIndex(ids, x => x.Contains(id));
            for (int k = first; k <= last; k++) Assert.True(ids[k].Contains(id), $"sequence {id} left out of step {steps[k]!["step"]} while live");
        }
        // Thirty-two streams submitted at once overlap: steps carry several of them, and new prompts are prefilled
        // in the same steps as running ones decode (continuous batching).
        Assert.Contains(steps, s => s!["decodeSequences"]!.GetValue<int>() >= 2);
        Assert.Contains(steps, s => s!["decodeSequences"]!.GetValue<int>() >= 1 && s["prefillSequences"]!.GetValue<int>() >= 1);
    }
}
