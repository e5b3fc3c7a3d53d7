using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.Gateway.Scheduling;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Api;

/// <summary><c>POST /v1/completions</c>: the legacy (text) completions API, with vLLM's extensions.</summary>
public static class CompletionsEndpoint
{
    public const int MaxPrompts = 64;
    public const int DefaultMaxTokens = 16;

    public static Task HandleAsync(HttpContext http) => ApiContext.RunAsync(http, "completions", RunAsync);

    static async Task RunAsync(ApiContext ctx)
    {
        var engine = ctx.Engine;
        var tokenizer = engine.Tokenizer!;
        using var doc = await RequestParsing.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted);
        var body = doc.RootElement;
        int? logprobs = body.OptInt("logprobs", 0, 20);
        var fields = RequestFields.Parse(body, engine, ctx.Options.Http, chat: false, logprobs);
        var echo = body.OptBool("echo") ?? false;
        if (body.Field("suffix", out _)) throw RequestFields.Unsupported("suffix", "suffix");
        var prompts = ParsePrompts(body, ctx);
        if (prompts.Count * fields.N > MaxPrompts * 4)
            throw ApiException.OutOfRange($"{prompts.Count} prompts x n {fields.N} is more than {MaxPrompts * 4} choices", "n");

        var maxTokens = prompts.Select(p => fields.ResolveMaxTokens(p.Length, engine.ContextLength, DefaultMaxTokens, "prompt")).ToArray();
        var stopIds = fields.StopTokenSet(tokenizer.EosId);
        var choices = new List<ChoiceRun>();
        try
        {
            for (int p = 0; p < prompts.Count; p++)
                for (int j = 0; j < fields.N; j++)
                {
                    var request = new GenerationRequest
                    {
                        PromptIds = prompts[p],
                        Sampling = fields.Sampling(j, logprobs ?? 0),
                        Choice = j,
                        MaxTokens = maxTokens[p],
                        StopTokenIds = stopIds,
                        PromptLogprobs = echo && logprobs is not null,
                    };
                    choices.Add(new ChoiceRun(p * fields.N + j, prompts[p], request,
                        new CompletionBuilder(tokenizer, logprobs is not null, fields.TokensAsIds, fields.Stops), echo, ctx.Aborted));
                }
            int promptTokens = prompts.Sum(p => p.Length);
            ctx.Telemetry.PromptTokens.Add(promptTokens);
            ctx.Logger.LogInformation("request {RequestId}: completions, {Prompts} prompt(s) of {PromptTokens} tokens, n {N}, max_tokens {MaxTokens}, stream {Stream}",
                ctx.RequestId, prompts.Count, promptTokens, fields.N, maxTokens.Max(), fields.Stream);
            var id = "cmpl-" + ctx.RequestId;
            var runner = new GenerationRunner(engine, ctx.Telemetry);
            var updates = runner.RunAsync(choices, logprobs is not null, chatLogprobs: false, fields.TokensAsIds, ctx.StartTimestamp, ctx.Aborted);
            if (!fields.Stream)
            {
                await foreach (var _ in updates.WithCancellation(ctx.Aborted)) { }
                var response = OpenAiJson.TextCompletion(id, fields.Model, choices.Select(c => c.Builder.ChoiceJson(c.Index)), Usage(promptTokens, choices));
                ctx.Http.Response.ContentType = "application/json";
                await ctx.Http.Response.WriteAsync(response.ToJsonString(OpenAiJson.Options), ctx.Aborted);
                return;
            }
            var created = OpenAiJson.Now();
            JsonObject Chunk(JsonObject choice)
            {
                var chunk = new JsonObject
                {
                    ["id"] = id,
                    ["object"] = "text_completion",
                    ["created"] = created,
                    ["model"] = fields.Model,
                    ["choices"] = new JsonArray(choice),
                };
                if (fields.IncludeUsage) chunk["usage"] = null;
                return chunk;
            }
            JsonObject Choice(int index, string text, JsonObject? lp, string? finish) => new()
            {
                ["index"] = index,
                ["text"] = text,
                ["logprobs"] = lp,
                ["finish_reason"] = finish,
            };
            await Sse.StartAsync(ctx.Http.Response, ctx.Aborted);
            await foreach (var update in updates.WithCancellation(ctx.Aborted))
            {
                JsonObject? choice = update switch
                {
                    EchoUpdate e => Choice(e.Choice.Index, e.Text, e.Logprobs, null),
                    TokenUpdate t when t.Delta.Length > 0 || t.LegacyLogprobs is not null => Choice(t.Choice.Index, t.Delta, t.LegacyLogprobs, null),
                    FinishUpdate f => Choice(f.Choice.Index, f.Delta, null, f.Reason),
                    _ => null,
                };
                if (choice is not null) await Sse.WriteAsync(ctx.Http.Response, Chunk(choice), ctx.Aborted);
            }
            if (fields.IncludeUsage)
            {
                var last = Chunk(new JsonObject());
                last["choices"] = new JsonArray();
                last["usage"] = Usage(promptTokens, choices);
                await Sse.WriteAsync(ctx.Http.Response, last, ctx.Aborted);
            }
            await Sse.DoneAsync(ctx.Http.Response, ctx.Aborted);
        }
        finally
        {
            foreach (var c in choices) c.Dispose();
        }
    }

    internal static JsonObject Usage(int promptTokens, IEnumerable<ChoiceRun> choices) =>
        OpenAiJson.Usage(promptTokens, choices.Sum(c => c.Builder.CompletionTokens));

    /// <summary><c>prompt</c>: a string, a list of token ids, or a list of either (several prompts).</summary>
    static List<int[]> ParsePrompts(JsonElement body, ApiContext ctx)
    {
        if (!body.Field("prompt", out var prompt)) throw ApiException.Invalid("'prompt' is required", "prompt", "missing_required_parameter");
        var tokenizer = ctx.Engine.Tokenizer!;
        var vocab = ctx.Engine.VocabSize;
        var prompts = new List<int[]>();
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                prompts.Add(tokenizer.Encode(prompt.GetString()!));
                break;
            case JsonValueKind.Array:
                if (prompt.GetArrayLength() == 0) throw ApiException.Invalid("'prompt' must not be empty", "prompt");
                var first = prompt[0].ValueKind;
                if (first == JsonValueKind.Number) prompts.Add(RequestParsing.TokenIds(prompt, "prompt", vocab));
                else if (first == JsonValueKind.String || first == JsonValueKind.Array)
                {
                    if (prompt.GetArrayLength() > MaxPrompts) throw ApiException.OutOfRange($"'prompt' may hold at most {MaxPrompts} prompts", "prompt");
                    int i = 0;
                    foreach (var p in prompt.EnumerateArray())
                    {
                        if (p.ValueKind == JsonValueKind.String) prompts.Add(tokenizer.Encode(p.GetString()!));
                        else if (p.ValueKind == JsonValueKind.Array) prompts.Add(RequestParsing.TokenIds(p, $"prompt[{i}]", vocab));
                        else throw ApiException.InvalidType($"prompt[{i}]", $"a string or a list of token ids, got {RequestParsing.Kind(p.ValueKind)}");
                        i++;
                    }
                }
                else throw ApiException.InvalidType("prompt", "a string, a list of token ids, or a list of strings or token-id lists");
                break;
            default:
                throw ApiException.InvalidType("prompt", $"a string, a list of token ids, or a list of prompts, got {RequestParsing.Kind(prompt.ValueKind)}");
        }
        if (prompts.Any(p => p.Length == 0)) throw ApiException.Invalid("a prompt is empty (no tokens)", "prompt");
        return prompts;
    }
}
