using Grid.Gateway.Scheduling;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Api;

/// <summary>
/// <c>POST /v1/completions</c>: the legacy (text) completions API, with vLLM's extensions. The body becomes a
/// <see cref="CompletionRequest"/>, that a <see cref="GenerationRequest"/> per choice, and the choices' updates
/// go out through <see cref="CompletionStreamWriter"/> or <see cref="CompletionJsonWriter"/>.
/// </summary>
public static class CompletionsEndpoint
{
    public static Task HandleAsync(HttpContext http) => ApiContext.RunAsync(http, "completions", RunAsync);

    static async Task RunAsync(ApiContext ctx)
    {
        var tokenizer = ctx.Engine.Tokenizer!;
        CompletionRequest request;
        using (var body = await RequestBody.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted))
        {
            request = CompletionRequest.Parse(body.RootElement, ctx.Engine, ctx.Options.Http);
            UnknownFields.Report(ctx, body.RootElement, UnknownFields.Completions);
        }
        var sampling = request.Sampling;
        bool logprobs = request.Logprobs is not null;
        using var choices = new ChoiceSet(request.GenerationRequests(tokenizer.EosId), request.PromptTokens, request.Echo,
            () => new CompletionBuilder(tokenizer, logprobs, sampling.TokensAsIds, sampling.Stops, sampling.MinTokens), ctx.Aborted);
        ctx.Telemetry.PromptTokens.Add(choices.PromptTokens);
        ctx.Logger.LogInformation("request {RequestId}: completions, {Prompts} prompt(s) of {PromptTokens} tokens, n {N}, max_tokens {MaxTokens}, stream {Stream}",
            ctx.RequestId, request.Prompts.Count, choices.PromptTokens, sampling.N, request.ResolvedMaxTokens.Max(), sampling.Stream);
        var updates = new GenerationRunner(ctx.Engine, ctx.Telemetry)
            .RunAsync(choices.Choices, legacyLogprobs: logprobs, chatLogprobs: false, sampling.TokensAsIds, ctx.StartTimestamp, ctx.Aborted);
        if (sampling.Stream) await CompletionStreamWriter.WriteAsync(ctx, request, choices, updates);
        else await CompletionJsonWriter.WriteAsync(ctx, request, choices, updates);
    }
}
