using System.Text.Json;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;

namespace Grid.Gateway.Api;

/// <summary>
/// A <c>POST /v1/completions</c> body, parsed and validated: the prompts as token ids, each with its generation
/// budget checked against the context length, plus the legacy-completions fields (<c>logprobs</c>, <c>echo</c>).
/// </summary>
public sealed record CompletionRequest
{
    public const int MaxPrompts = 64;
    /// <summary>Response ids are this prefix plus the request id.</summary>
    public const string IdPrefix = "cmpl-";
    public const int DefaultMaxTokens = 16;

    public required SamplingRequest Sampling { get; init; }
    /// <summary>One or more prompts (strings are tokenized with BOS); each gets <c>n</c> choices.</summary>
    public required IReadOnlyList<int[]> Prompts { get; init; }
    /// <summary>The generation budget of each prompt: <c>max_tokens</c>, or the default within the context.</summary>
    public required IReadOnlyList<int> ResolvedMaxTokens { get; init; }
    /// <summary>Top-N legacy logprobs (0..20); null when not asked.</summary>
    public int? Logprobs { get; init; }
    public bool Echo { get; init; }
    /// <summary>Structured output (<c>response_format</c> json_object/json_schema); null: free text.</summary>
    public OutputGrammar? Grammar { get; init; }

    /// <summary>Prompt tokens, counted once per prompt (not per choice), as <c>usage</c> reports them.</summary>
    public int PromptTokens => Prompts.Sum(p => p.Length);

    /// <summary>Parses and validates the body; every refusal is an <see cref="ApiException"/>.</summary>
    public static CompletionRequest Parse(JsonElement body, ServingEngine engine, HttpOptions http)
    {
        int? logprobs = body.OptInt("logprobs", 0, 20);
        var sampling = SamplingRequest.Parse(body, engine, http, chat: false, logprobs);
        var echo = body.OptBool("echo") ?? false;
        if (body.Field("suffix", out _)) throw ApiException.Unsupported("suffix", "suffix");
        var grammar = ResponseFormat.Parse(body, engine);
        if (grammar is not null && sampling.MinTokens > 0)
            throw ApiException.Invalid("'min_tokens' cannot be combined with structured output ('response_format' or a forced tool call): a finished document may only end the choice", "min_tokens");
        var prompts = ParsePrompts(body, engine);
        if (prompts.Count * sampling.BestOf > MaxPrompts * 4)
            throw ApiException.OutOfRange($"{prompts.Count} prompts x {(sampling.BestOf > sampling.N ? "best_of" : "n")} {sampling.BestOf} is more than {MaxPrompts * 4} choices",
                sampling.BestOf > sampling.N ? "best_of" : "n");
        return new CompletionRequest
        {
            Sampling = sampling,
            Prompts = prompts,
            ResolvedMaxTokens = prompts.Select(p => sampling.ResolveMaxTokens(p.Length, engine.ContextLength, engine.GenerationDefaults.MaxNewTokens ?? DefaultMaxTokens, "prompt")).ToArray(),
            Logprobs = logprobs,
            Echo = echo,
            Grammar = grammar,
        };
    }

    /// <summary>
    /// One generation request per candidate, in order: prompt by prompt, <c>best_of</c> (= <c>n</c> unless given) for each;
    /// candidate j of a prompt draws as choice j (seed, j, token index).
    /// </summary>
    public IReadOnlyList<GenerationRequest> GenerationRequests(int? eosId)
    {
        var stopIds = Sampling.StopTokenSet(eosId);
        if (Grammar is not null && eosId is int eos) stopIds = new HashSet<int>(stopIds) { eos };
        var requests = new List<GenerationRequest>(Prompts.Count * Sampling.BestOf);
        for (int p = 0; p < Prompts.Count; p++)
            for (int j = 0; j < Sampling.BestOf; j++)
                requests.Add(new GenerationRequest
                {
                    PromptIds = Prompts[p],
                    Sampling = Sampling.Params(Logprobs ?? 0, stopIds),
                    Choice = j,
                    MaxTokens = ResolvedMaxTokens[p],
                    StopTokenIds = stopIds,
                    PromptLogprobs = Echo && Logprobs is not null,
                    Constraint = Grammar?.For(Prompts[p].Length, ResolvedMaxTokens[p], stopIds),
                });
        return requests;
    }

    /// <summary>
    /// <c>prompt</c>: a string, a list of token ids, or a list of either (several prompts). Text is tokenized with BOS and
    /// without parsing special tokens: "    /// <summary><c>prompt</c>: a string, a list of token ids, or a list of either (several prompts).</summary>lt;｜end▁of▁sentence｜    /// <summary><c>prompt</c>: a string, a list of token ids, or a list of either (several prompts).</summary>gt;" in a prompt is that text, not EOS (ids can name any token).
    /// </summary>
    static List<int[]> ParsePrompts(JsonElement body, ServingEngine engine)
    {
        if (!body.Field("prompt", out var prompt)) throw ApiException.Invalid("'prompt' is required", "prompt", "missing_required_parameter");
        var tokenizer = engine.Tokenizer!;
        var vocab = engine.VocabSize;
        var prompts = new List<int[]>();
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                prompts.Add(tokenizer.Encode(prompt.GetString()!, parseSpecialTokens: false));
                break;
            case JsonValueKind.Array:
                if (prompt.GetArrayLength() == 0) throw ApiException.Invalid("'prompt' must not be empty", "prompt");
                var first = prompt[0].ValueKind;
                if (first == JsonValueKind.Number) prompts.Add(JsonFields.TokenIds(prompt, "prompt", vocab));
                else if (first == JsonValueKind.String || first == JsonValueKind.Array)
                {
                    if (prompt.GetArrayLength() > MaxPrompts) throw ApiException.OutOfRange($"'prompt' may hold at most {MaxPrompts} prompts", "prompt");
                    int i = 0;
                    foreach (var p in prompt.EnumerateArray())
                    {
                        if (p.ValueKind == JsonValueKind.String) prompts.Add(tokenizer.Encode(p.GetString()!, parseSpecialTokens: false));
                        else if (p.ValueKind == JsonValueKind.Array) prompts.Add(JsonFields.TokenIds(p, $"prompt[{i}]", vocab));
                        else throw ApiException.InvalidType($"prompt[{i}]", $"a string or a list of token ids, got {JsonFields.Kind(p.ValueKind)}");
                        i++;
                    }
                }
                else throw ApiException.InvalidType("prompt", "a string, a list of token ids, or a list of strings or token-id lists");
                break;
            default:
                throw ApiException.InvalidType("prompt", $"a string, a list of token ids, or a list of prompts, got {JsonFields.Kind(prompt.ValueKind)}");
        }
        if (prompts.Any(p => p.Length == 0)) throw ApiException.Invalid("a prompt is empty (no tokens)", "prompt");
        return prompts;
    }
}
