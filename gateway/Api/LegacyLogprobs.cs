using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>
/// Builds the legacy completions <c>logprobs</c> object (tokens, token_logprobs, top_logprobs as token->logprob
/// maps, text_offset) and the chat form (content[] with token, logprob, bytes, top_logprobs[]).
/// With <c>return_tokens_as_token_ids</c> every token is rendered as <c>token_id:N</c>.
/// </summary>
public sealed class LegacyLogprobs(GridTokenizer tokenizer, bool tokensAsIds)
{
    readonly JsonArray _tokens = new(), _tokenLogprobs = new(), _top = new(), _offsets = new();
    int _textOffset;

    public string Render(int id) => tokensAsIds ? $"token_id:{id}" : tokenizer.TokenText(id);

    /// <summary>Adds one token; <paramref name="token"/> null means no logprob (the first prompt token).</summary>
    public void Add(int id, SampledToken? token, int textLength)
    {
        _tokens.Add(Render(id));
        _tokenLogprobs.Add(token is null ? null : JsonValue.Create(token.Logprob));
        if (token is null) _top.Add(null);
        else
        {
            var top = new JsonObject();
            foreach (var (alt, lp) in token.Top)
            {
                var key = Render(alt);
                if (!top.ContainsKey(key)) top[key] = lp;
            }
            _top.Add(top);
        }
        _offsets.Add(_textOffset);
        _textOffset += textLength;
    }

    public void StartAt(int textOffset) => _textOffset = textOffset;

    public JsonObject ToJson() => new()
    {
        ["tokens"] = _tokens.DeepClone(),
        ["token_logprobs"] = _tokenLogprobs.DeepClone(),
        ["top_logprobs"] = _top.DeepClone(),
        ["text_offset"] = _offsets.DeepClone(),
    };

    /// <summary>The chat-completions form of one token.</summary>
    public JsonObject ChatEntry(SampledToken token)
    {
        JsonObject Entry(int id, double lp)
        {
            var text = Render(id);
            return new JsonObject
            {
                ["token"] = text,
                ["logprob"] = lp,
                ["bytes"] = new JsonArray(System.Text.Encoding.UTF8.GetBytes(text).Select(b => (JsonNode)(int)b).ToArray()),
            };
        }
        var entry = Entry(token.Token, token.Logprob);
        entry["top_logprobs"] = new JsonArray(token.Top.Select(t => (JsonNode)Entry(t.Id, t.Logprob)).ToArray());
        return entry;
    }
}
