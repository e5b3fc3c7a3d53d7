using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.ModelCore.Tokenization;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>
/// vLLM's <c>POST /tokenize</c> and <c>POST /detokenize</c>: the ids a prompt (or chat messages rendered with the chat
/// template) becomes, exactly as the generation endpoints tokenize them, and the text of a list of ids. Behind the API
/// key like the other routes; OpenAI error JSON for bad input.
/// </summary>
public static class TokenizerEndpoints
{
    /// <summary>Fields of a /tokenize body.</summary>
    static readonly IReadOnlySet<string> TokenizeFields = new HashSet<string>(StringComparer.Ordinal)
    {
        "model", "prompt", "messages", "tools", "add_generation_prompt", "add_special_tokens", "return_token_strs",
    };

    static readonly IReadOnlySet<string> DetokenizeFields = new HashSet<string>(StringComparer.Ordinal) { "model", "tokens" };

    /// <summary>
    /// <c>{"model", "prompt", "add_special_tokens" (default true), "return_token_strs"}</c> or <c>{"model", "messages", "tools",
    /// "add_generation_prompt" (default true), "add_special_tokens" (default false: the template writes BOS)}</c> ->
    /// <c>{"count", "max_model_len", "tokens", "token_strs"}</c>. Prompt text is tokenized as /v1/completions does
    /// (special-token strings stay plain text).
    /// </summary>
    public static Task TokenizeAsync(HttpContext http) => ApiContext.RunAsync(http, "tokenize", async ctx =>
    {
        var tokenizer = ctx.Engine.Tokenizer!;
        int[] ids;
        bool tokenStrs;
        using (var body = await RequestBody.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted))
        {
            var root = body.RootElement;
            CheckModel(root, ctx);
            tokenStrs = root.OptBool("return_token_strs") ?? false;
            bool hasPrompt = root.Field("prompt", out var prompt), hasMessages = root.Field("messages", out _);
            if (hasPrompt == hasMessages)
                throw ApiException.Invalid("give either 'prompt' or 'messages'", hasPrompt ? "messages" : "prompt", hasPrompt ? "invalid_request" : "missing_required_parameter");
            if (hasPrompt)
            {
                if (prompt.ValueKind != JsonValueKind.String) throw ApiException.InvalidType("prompt", $"a string, got {JsonFields.Kind(prompt.ValueKind)}");
                ids = tokenizer.Encode(prompt.GetString()!, addSpecialTokens: root.OptBool("add_special_tokens") ?? true, parseSpecialTokens: false);
            }
            else
            {
                var messages = ChatRequest.ParseMessages(root);
                var addGenerationPrompt = root.OptBool("add_generation_prompt") ?? true;
                var addSpecial = root.OptBool("add_special_tokens") ?? false;
                if (!tokenizer.HasChatTemplate)
                    throw ApiException.Invalid($"the model '{ctx.Engine.ModelName}' has no chat template; tokenize a 'prompt'", "messages", "no_chat_template");
                // vLLM's chat form takes tools too: rendered as a chat request renders them.
                var (rendered, variables) = ToolPrompt.Prepare(messages, ToolSet.Parse(root, ctx.Engine), tokenizer);
                try { ids = tokenizer.EncodeChat(rendered, addGenerationPrompt, variables); }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    throw ApiException.Invalid($"the chat template could not render these messages: {e.Message}", "messages", "invalid_messages");
                }
                if (addSpecial) ids = [.. tokenizer.Encode("", addSpecialTokens: true), .. ids];
            }
            UnknownFields.Report(ctx, root, TokenizeFields);
        }
        var response = new JsonObject
        {
            ["count"] = ids.Length,
            ["max_model_len"] = ctx.Engine.ContextLength,
            ["tokens"] = new JsonArray(ids.Select(id => (JsonNode)id).ToArray()),
            ["token_strs"] = tokenStrs ? new JsonArray(ids.Select(id => (JsonNode?)(tokenizer.TokenPiece(id) ?? tokenizer.TokenText(id))).ToArray()) : null,
        };
        await OpenAiJson.WriteAsync(ctx.Http.Response, response, ctx.Aborted);
    });

    /// <summary><c>{"model", "tokens": [ids]}</c> -> <c>{"prompt": text}</c> (special tokens kept, as Hugging Face's decode and vLLM).</summary>
    public static Task DetokenizeAsync(HttpContext http) => ApiContext.RunAsync(http, "detokenize", async ctx =>
    {
        var tokenizer = ctx.Engine.Tokenizer!;
        int[] ids;
        using (var body = await RequestBody.ReadObjectAsync(ctx.Http.Request, ctx.Options.Http.MaxRequestBodyBytes, ctx.Aborted))
        {
            var root = body.RootElement;
            CheckModel(root, ctx);
            if (!root.Field("tokens", out var tokens)) throw ApiException.Invalid("'tokens' is required", "tokens", "missing_required_parameter");
            ids = JsonFields.TokenIds(tokens, "tokens", ctx.Engine.VocabSize);
            UnknownFields.Report(ctx, root, DetokenizeFields);
        }
        await OpenAiJson.WriteAsync(ctx.Http.Response, new JsonObject { ["prompt"] = tokenizer.Decode(ids, skipSpecialTokens: false) }, ctx.Aborted);
    });

    static void CheckModel(JsonElement body, ApiContext ctx)
    {
        var model = body.OptString("model");
        if (model is not null && !ctx.Engine.Serves(model))
            throw new ApiException(404, $"The model '{model}' does not exist; this server serves {string.Join(", ", ctx.Engine.ServedNames.Select(n => $"'{n}'"))}", "model", "model_not_found");
    }
}
