using Grid.Gateway.Scheduling;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Grid.Gateway.Api;

/// <summary>
/// <c>POST /v1/chat/completions</c>: messages rendered with the checkpoint's chat template. The body becomes a
/// <see cref="ChatRequest"/>, that a <see cref="GenerationRequest"/> per choice, and the choices' updates go out
/// through <see cref="ChatStreamWriter"/> or <see cref="ChatJsonWriter"/>.
/// </summary>
public static class ChatEndpoint
{
    public static Task HandleAsync(HttpContext http) => ApiContext.RunAsync(http, "chat.completions", RunAsync);

    static async Task RunAsync(ApiContext ctx)
    {
        var tokenizer = ctx.Engine.Tokenizer!;
        ChatRequest request;
        using (var body = await RequestBody.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted))
        {
            request = ChatRequest.Parse(body.RootElement, ctx.Engine, ctx.Options.Http);
            UnknownFields.Report(ctx, body.RootElement, UnknownFields.Chat);
        }
        var sampling = request.Sampling;
        using var choices = new ChoiceSet(request.GenerationRequests(tokenizer.EosId), request.PromptIds.Length, echo: false,
            () => new CompletionBuilder(tokenizer, logprobs: false, sampling.TokensAsIds, sampling.Stops, sampling.MinTokens), ctx.Aborted);
        ctx.Telemetry.PromptTokens.Add(choices.PromptTokens);
        ctx.Logger.LogInformation("request {RequestId}: chat, {Messages} messages, {PromptTokens} prompt tokens, n {N}, max_tokens {MaxTokens}, stream {Stream}",
            ctx.RequestId, request.Messages.Count, choices.PromptTokens, sampling.N, request.ResolvedMaxTokens, sampling.Stream);
        var updates = new GenerationRunner(ctx.Engine, ctx.Telemetry)
            .RunAsync(choices.Choices, legacyLogprobs: false, chatLogprobs: request.Logprobs, sampling.TokensAsIds, ctx.StartTimestamp, ctx.Aborted);
        if (sampling.Stream) await ChatStreamWriter.WriteAsync(ctx, request, choices, updates);
        else await ChatJsonWriter.WriteAsync(ctx, request, choices, updates);
    }
}
