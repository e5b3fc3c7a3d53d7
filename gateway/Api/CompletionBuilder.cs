using System.Text.Json.Nodes;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>Collects one choice's events into text, legacy logprobs, finish reason and token counts.</summary>
public sealed class CompletionBuilder
{
    readonly GridTokenizer _tokenizer;
    readonly TextAccumulator _text;
    readonly LegacyLogprobs? _logprobs;
    readonly List<JsonObject> _chatLogprobs = new();
    string _echo = "";

    public string? FinishReason { get; private set; }
    public int PromptTokens { get; set; }
    /// <summary>Prompt tokens taken from the prefix cache (from the finish event).</summary>
    public int CachedTokens { get; set; }
    public int CompletionTokens { get; private set; }
    public string Text => _echo + _text.Text;

    /// <summary>The sum of the generated tokens' logprobs (raw logits): how <c>best_of</c> ranks candidates.</summary>
    public double CumulativeLogprob { get; private set; }

    readonly int _minTokens;

    /// <param name="minTokens">Stop strings are not honoured until this many tokens are generated (vLLM's min_tokens).</param>
    public CompletionBuilder(GridTokenizer tokenizer, bool logprobs, bool tokensAsIds, IReadOnlyList<string> stops, int minTokens = 0)
    {
        _minTokens = minTokens;
        _tokenizer = tokenizer;
        _text = new TextAccumulator(tokenizer, stops);
        _logprobs = logprobs ? new LegacyLogprobs(tokenizer, tokensAsIds) : null;
        LogprobRenderer = new LegacyLogprobs(tokenizer, tokensAsIds);
    }

    public LegacyLogprobs LogprobRenderer { get; }

    /// <summary>Echo: the prompt's text (and its logprobs where asked) goes before the completion.</summary>
    public void Echo(int[] promptIds, Grid.ModelCore.Sampling.SampledToken?[]? promptLogprobs)
    {
        _echo = _tokenizer.Decode(promptIds);
        if (_logprobs is null) return;
        for (int i = 0; i < promptIds.Length; i++)
            _logprobs.Add(promptIds[i], promptLogprobs?[i], _tokenizer.TokenText(promptIds[i]).Length);
    }

    /// <summary>Applies one event; returns the text delta it produced (for streaming).</summary>
    public string Add(GenerationEvent ev)
    {
        switch (ev)
        {
            case TokenEvent t when FinishReason is null && !_text.Stopped:
                CompletionTokens++;
                CumulativeLogprob += t.Token.Logprob;
                var delta = _text.Add(t.Token.Token, honourStops: CompletionTokens >= _minTokens);
                _logprobs?.Add(t.Token.Token, t.Token, _tokenizer.TokenText(t.Token.Token).Length);
                _chatLogprobs.Add(LogprobRenderer.ChatEntry(t.Token));
                if (_text.Stopped) FinishReason = "stop";
                return delta;
            case FinishedEvent f:
                PromptTokens = f.PromptTokens;
                CachedTokens = f.CachedTokens;
                FinishReason ??= f.Reason;
                return _text.Flush();
            default:
                return "";
        }
    }

    public JsonObject? LogprobsJson() => _logprobs?.ToJson();

    public JsonArray ChatLogprobsContent() => new(_chatLogprobs.Select(x => (JsonNode)x.DeepClone()).ToArray());

    public JsonObject ChoiceJson(int index) => new()
    {
        ["index"] = index,
        ["text"] = Text,
        ["logprobs"] = LogprobsJson(),
        ["finish_reason"] = FinishReason,
    };

    public JsonObject Usage() => OpenAiJson.Usage(PromptTokens, CompletionTokens, CachedTokens);
}
