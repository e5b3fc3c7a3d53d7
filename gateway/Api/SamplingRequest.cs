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
    public double PresencePenalty { get; init; }
    public double FrequencyPenalty { get; init; }
    public double RepetitionPenalty { get; init; } = 1.0;
    public double MinP { get; init; }
    /// <summary>Stop tokens (EOS, stop_token_ids) are masked and stop strings not honoured until this many tokens are generated.</summary>
    public int MinTokens { get; init; }
    /// <summary>logit_bias as (token, bias) pairs, biases clamped to [-100, 100].</summary>
    public TokenBias[] LogitBias { get; init; } = [];
    /// <summary>Candidates generated per prompt, of which the <see cref="N"/> with the highest cumulative logprob are returned (completions).</summary>
    public int BestOf { get; init; } = 1;

    /// <summary>Most logit_bias entries per request.</summary>
    public const int MaxLogitBias = 300;

    /// <summary>Most stop strings per request.</summary>
    public const int MaxStops = 16;
    /// <summary>Longest stop string, in UTF-16 characters (a stop is matched in the text, not in tokens).</summary>
    public const int MaxStopLength = 1024;

    /// <summary>Parses the shared fields; <paramref name="logprobs"/> (the endpoint's own top-N) takes part in the range checks.</summary>
    public static SamplingRequest Parse(JsonElement body, ServingEngine engine, HttpOptions http, bool chat, int? logprobs)
    {
        var model = body.OptString("model");
        if (model is not null && !engine.Serves(model))
            throw new ApiException(404, $"The model '{model}' does not exist; this server serves {string.Join(", ", engine.ServedNames.Select(n => $"'{n}'"))}", "model", "model_not_found");
        // A field the request leaves out takes the checkpoint's generation_config.json default, then the API's.
        var defaults = engine.GenerationDefaults;

        string maxParam = "max_tokens";
        int? maxTokens = null;
        if (chat && body.Field("max_completion_tokens", out _))
        {
            maxParam = "max_completion_tokens";
            maxTokens = body.OptInt(maxParam, int.MinValue, int.MaxValue);
        }
        else maxTokens = body.OptInt("max_tokens", int.MinValue, int.MaxValue);

        var temperature = body.OptDouble("temperature") ?? defaults.Temperature ?? 1.0;
        var topP = body.OptDouble("top_p") ?? defaults.TopP ?? 1.0;
        var topK = body.OptInt("top_k", int.MinValue, int.MaxValue) ?? defaults.TopK ?? 0;
        if (Validation.Sampling(temperature, topP, topK, logprobs, maxTokens ?? 1) is { } bad)
            throw ApiException.OutOfRange(bad.Message.Replace("max_tokens", maxParam), bad.Param == "max_tokens" ? maxParam : bad.Param);

        var seed = body.OptLong("seed");
        var stops = body.Stops("stop", MaxStops, MaxStopLength);
        var stopIds = body.Field("stop_token_ids", out var ids) ? JsonFields.TokenIds(ids, "stop_token_ids", engine.VocabSize) : [];
        var ignoreEos = body.OptBool("ignore_eos") ?? false;
        var n = body.OptInt("n", int.MinValue, int.MaxValue) ?? 1;
        if (n < 1 || n > http.MaxChoices) throw ApiException.OutOfRange($"'n' must be between 1 and {http.MaxChoices}, got {n}", "n");
        var stream = body.OptBool("stream") ?? false;
        int bestOf = n;
        if (body.Field("best_of", out _))
        {
            bestOf = body.OptInt("best_of", int.MinValue, int.MaxValue)!.Value;
            if (bestOf < 1) throw ApiException.OutOfRange($"'best_of' must be at least 1, got {bestOf}", "best_of");
            if (bestOf < n) throw ApiException.Invalid($"'best_of' must be greater than or equal to 'n' ({n}), got {bestOf}", "best_of");
            if (bestOf > http.MaxChoices) throw ApiException.OutOfRange($"'best_of' must be at most {http.MaxChoices}, got {bestOf}", "best_of");
            if (bestOf != n && chat) throw ApiException.Unsupported("best_of other than n in chat completions (use /v1/completions)", "best_of");
            if (bestOf != n && stream) throw ApiException.Invalid("'best_of' greater than 'n' cannot be streamed: the best completions are known only at the end", "best_of");
        }
        var presence = Penalty(body, "presence_penalty");
        var frequency = Penalty(body, "frequency_penalty");
        var repetition = body.OptDouble("repetition_penalty") ?? defaults.RepetitionPenalty ?? 1.0;
        if (!(repetition > 0) || double.IsInfinity(repetition))
            throw ApiException.OutOfRange($"'repetition_penalty' must be greater than 0, got {repetition}", "repetition_penalty");
        var minP = body.OptDouble("min_p") ?? defaults.MinP ?? 0.0;
        if (!(minP >= 0 && minP <= 1)) throw ApiException.OutOfRange($"'min_p' must be between 0 and 1, got {minP}", "min_p");
        var minTokens = body.OptInt("min_tokens", int.MinValue, int.MaxValue) ?? 0;
        if (minTokens < 0) throw ApiException.OutOfRange($"'min_tokens' must be at least 0, got {minTokens}", "min_tokens");
        if (maxTokens is int mt && minTokens > mt)
            throw ApiException.Invalid($"'min_tokens' ({minTokens}) must be less than or equal to '{maxParam}' ({mt})", "min_tokens");
        var logitBias = body.Field("logit_bias", out var bias) ? LogitBiasOf(bias, engine.VocabSize) : [];
        body.OptString("user");
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
            PresencePenalty = presence,
            FrequencyPenalty = frequency,
            RepetitionPenalty = repetition,
            MinP = minP,
            MinTokens = minTokens,
            LogitBias = logitBias,
            BestOf = bestOf,
        };
    }

    static double Penalty(JsonElement body, string name)
    {
        var value = body.OptDouble(name) ?? 0;
        if (!(value >= -2 && value <= 2)) throw ApiException.OutOfRange($"'{name}' must be between -2 and 2, got {value}", name);
        return value;
    }

    /// <summary>
    /// <c>logit_bias</c>: an object mapping token ids (as strings, OpenAI's form) to biases; at most <see cref="MaxLogitBias"/>
    /// entries, ids within the vocabulary, biases numbers clamped to [-100, 100] (as vLLM does).
    /// </summary>
    static TokenBias[] LogitBiasOf(JsonElement bias, int vocab)
    {
        if (bias.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("logit_bias", $"an object mapping token ids to biases, got {JsonFields.Kind(bias.ValueKind)}");
        var entries = bias.EnumerateObject().ToList();
        if (entries.Count > MaxLogitBias)
            throw ApiException.OutOfRange($"'logit_bias' may hold at most {MaxLogitBias} entries, got {entries.Count}", "logit_bias");
        var result = new TokenBias[entries.Count];
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            if (!int.TryParse(e.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id))
                throw ApiException.Invalid($"Invalid key in 'logit_bias': '{e.Name}' is not a token id (a non-negative integer as a string)", "logit_bias");
            if (id >= vocab) throw ApiException.OutOfRange($"Invalid key in 'logit_bias': {id}. Maximum value is {vocab - 1}.", "logit_bias");
            if (e.Value.ValueKind != JsonValueKind.Number)
                throw ApiException.InvalidType($"logit_bias.{e.Name}", $"a number, got {JsonFields.Kind(e.Value.ValueKind)}");
            var value = e.Value.GetDouble();
            result[i] = new TokenBias(id, (float)Math.Clamp(value, -100, 100));
        }
        return result;
    }

    /// <summary>Sampling settings of every choice; a choice's draws depend on (seed, choice, token index), see <see cref="Grid.Gateway.Scheduling.GenerationRequest.Choice"/>.</summary>
    /// <param name="stopTokenIds">The tokens that end the sequence (<see cref="StopTokenSet"/>), masked until min_tokens are generated.</param>
    public SamplingParams Params(int logprobs, IReadOnlyCollection<int> stopTokenIds) => new()
    {
        Temperature = Temperature,
        TopP = TopP,
        TopK = TopK,
        Seed = Seed,
        Logprobs = logprobs,
        PresencePenalty = PresencePenalty,
        FrequencyPenalty = FrequencyPenalty,
        RepetitionPenalty = RepetitionPenalty,
        MinP = MinP,
        MinTokens = MinTokens,
        StopTokenIds = MinTokens > 0 ? stopTokenIds.Order().ToArray() : [],
        LogitBias = LogitBias,
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
        if (MinTokens > max)
            throw ApiException.Invalid($"'min_tokens' ({MinTokens}) must be less than or equal to {MaxTokensParam} ({max})", "min_tokens");
        if ((long)promptLength + max > contextLength)   // long: max_tokens near int.MaxValue must not wrap around
            throw new ApiException(400, $"This model's maximum context length is {contextLength} tokens. However, you requested {(long)promptLength + max} tokens ({promptLength} in the prompt, {max} for the completion). Please reduce the prompt or {MaxTokensParam}.",
                MaxTokensParam, "context_length_exceeded");
        return max;
    }
}
