using System.Text.Json;
using Grid.Gateway.Hosting;
using Grid.ModelCore.Sampling;

namespace Grid.Gateway.Api;

/// <summary>
/// The part of a request that /v1/completions and /v1/chat/completions share, parsed and range-checked: the model
/// name, the sampling settings, stops, <c>n</c>, streaming, and how tokens are rendered.
/// </summary>
public sealed record SamplingRequest
{
    public required string Model { get; init; }
    /// <summary><c>max_tokens</c> as asked (null: the endpoint's default); see <see cref="ResolveMaxTokens"/>.</summary>
    public int? MaxTokens { get; init; }
    /// <summary>The field <see cref="MaxTokens"/> came from (chat also takes <c>max_completion_tokens</c>), for errors.</summary>
    public string MaxTokensParam { get; init; } = "max_tokens";
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    public int TopK { get; init; }
    public long? Seed { get; init; }
    public string[] Stops { get; init; } = [];
    public int[] StopTokenIds { get; init; } = [];
    public bool IgnoreEos { get; init; }
    public int N { get; init; } = 1;
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    public bool TokensAsIds { get; init; }

    /// <summary>Most stop strings per request.</summary>
    public const int MaxStops = 16;
    /// <summary>Longest stop string, in UTF-16 characters (a stop is matched in the text, not in tokens).</summary>
    public const int MaxStopLength = 1024;

    /// <summary>Parses the shared fields; <paramref name="logprobs"/> (the endpoint's own top-N) takes part in the range checks.</summary>
    public static SamplingRequest Parse(JsonElement body, ServingEngine engine, HttpOptions http, bool chat, int? logprobs)
    {
        var model = body.OptString("model");
        if (model is not null && model != engine.ModelName)
            throw new ApiException(404, $"The model '{model}' does not exist; this server serves '{engine.ModelName}'", "model", "model_not_found");

        string maxParam = "max_tokens";
        int? maxTokens = null;
        if (chat && body.Field("max_completion_tokens", out _))
        {
            maxParam = "max_completion_tokens";
            maxTokens = body.OptInt(maxParam, int.MinValue, int.MaxValue);
        }
        else maxTokens = body.OptInt("max_tokens", int.MinValue, int.MaxValue);

        var temperature = body.OptDouble("temperature") ?? 1.0;
        var topP = body.OptDouble("top_p") ?? 1.0;
        var topK = body.OptInt("top_k", int.MinValue, int.MaxValue) ?? 0;
        if (Validation.Sampling(temperature, topP, topK, logprobs, maxTokens ?? 1) is { } bad)
            throw ApiException.OutOfRange(bad.Message.Replace("max_tokens", maxParam), bad.Param == "max_tokens" ? maxParam : bad.Param);

        var seed = body.OptLong("seed");
        var stops = body.Stops("stop", MaxStops, MaxStopLength);
        var stopIds = body.Field("stop_token_ids", out var ids) ? JsonFields.TokenIds(ids, "stop_token_ids", engine.VocabSize) : [];
        var ignoreEos = body.OptBool("ignore_eos") ?? false;
        var n = body.OptInt("n", int.MinValue, int.MaxValue) ?? 1;
        if (n < 1 || n > http.MaxChoices) throw ApiException.OutOfRange($"'n' must be between 1 and {http.MaxChoices}, got {n}", "n");
        if (body.Field("best_of", out _))
        {
            var bestOf = body.OptInt("best_of", int.MinValue, int.MaxValue);
            if (bestOf < 1) throw ApiException.OutOfRange($"'best_of' must be at least 1, got {bestOf}", "best_of");
            if (bestOf != n) throw ApiException.Unsupported("best_of other than n", "best_of");
        }
        foreach (var penalty in new[] { "presence_penalty", "frequency_penalty" })
        {
            var value = body.OptDouble(penalty);
            if (value is < -2 or > 2) throw ApiException.OutOfRange($"'{penalty}' must be between -2 and 2, got {value}", penalty);
            if (value is not null and not 0) throw ApiException.Unsupported($"a non-zero {penalty}", penalty);
        }
        if (body.OptDouble("repetition_penalty") is { } rep)
        {
            if (rep <= 0) throw ApiException.OutOfRange($"'repetition_penalty' must be positive, got {rep}", "repetition_penalty");
            if (rep != 1) throw ApiException.Unsupported("a repetition_penalty other than 1", "repetition_penalty");
        }
        if (body.Field("logit_bias", out var bias))
        {
            if (bias.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("logit_bias", $"an object, got {JsonFields.Kind(bias.ValueKind)}");
            if (bias.EnumerateObject().Any()) throw ApiException.Unsupported("logit_bias", "logit_bias");
        }
        body.OptString("user");
        var stream = body.OptBool("stream") ?? false;
        bool includeUsage = false;
        if (body.Field("stream_options", out var so))
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("stream_options", $"an object, got {JsonFields.Kind(so.ValueKind)}");
            if (!stream) throw ApiException.Invalid("'stream_options' is only allowed when 'stream' is true", "stream_options");
            includeUsage = so.OptBool("include_usage") ?? false;
        }
        var tokensAsIds = body.OptBool("return_tokens_as_token_ids") ?? false;
        return new SamplingRequest
        {
            Model = engine.ModelName,
            MaxTokens = maxTokens,
            MaxTokensParam = maxParam,
            Temperature = temperature,
            TopP = topP,
            TopK = topK < 0 ? 0 : topK,
            Seed = seed,
            Stops = stops,
            StopTokenIds = stopIds,
            IgnoreEos = ignoreEos,
            N = n,
            Stream = stream,
            IncludeUsage = includeUsage,
            TokensAsIds = tokensAsIds,
        };
    }

    /// <summary>Sampling settings of every choice; a choice's draws depend on (seed, choice, token index), see <see cref="Grid.Gateway.Scheduling.GenerationRequest.Choice"/>.</summary>
    public SamplingParams Params(int logprobs) => new()
    {
        Temperature = Temperature,
        TopP = TopP,
        TopK = TopK,
        Seed = Seed,
        Logprobs = logprobs,
    };

    /// <summary>EOS (unless ignore_eos) plus stop_token_ids.</summary>
    public IReadOnlyCollection<int> StopTokenSet(int? eos)
    {
        var set = new HashSet<int>(StopTokenIds);
        if (!IgnoreEos && eos is int e) set.Add(e);
        return set;
    }

    /// <summary>The generation budget for a prompt: checks the context length (400 context_length_exceeded).</summary>
    public int ResolveMaxTokens(int promptLength, int contextLength, int defaultMaxTokens, string promptParam)
    {
        if (promptLength >= contextLength)
            throw new ApiException(400, $"This model's maximum context length is {contextLength} tokens; the prompt has {promptLength} tokens, leaving no room to generate",
                promptParam, "context_length_exceeded");
        var max = MaxTokens ?? Math.Min(defaultMaxTokens, contextLength - promptLength);
        if ((long)promptLength + max > contextLength)   // long: max_tokens near int.MaxValue must not wrap around
            throw new ApiException(400, $"This model's maximum context length is {contextLength} tokens. However, you requested {(long)promptLength + max} tokens ({promptLength} in the prompt, {max} for the completion). Please reduce the prompt or {MaxTokensParam}.",
                MaxTokensParam, "context_length_exceeded");
        return max;
    }
}
