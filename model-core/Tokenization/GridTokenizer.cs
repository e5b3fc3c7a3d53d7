using System.Text.Json.Nodes;
using Grid.ChatTemplates;
using Tokenizers.DotNet;

namespace Grid.ModelCore.Tokenization;

/// <summary>
/// A checkpoint's tokenizer: <c>tokenizer.json</c> run by the Hugging Face tokenizers library (byte-level BPE
/// with DeepSeek's pre-tokenizer and added special tokens), plus <c>tokenizer_config.json</c>'s chat template
/// and BOS/EOS tokens. Thread-safe for concurrent Encode/Decode.
/// </summary>
public sealed class GridTokenizer : IDisposable
{
    readonly Tokenizer _tokenizer;
    readonly object _lock = new();
    readonly Dictionary<int, string> _specialTokens = new();
    readonly int[] _specialPrefix;
    readonly ChatTemplate? _chatTemplate;

    public string BosToken { get; }
    public string EosToken { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public bool HasChatTemplate => _chatTemplate is not null;

    GridTokenizer(string directory)
    {
        var tokenizerJson = Path.Combine(directory, "tokenizer.json");
        if (!File.Exists(tokenizerJson)) throw new TokenizerLoadException($"tokenizer.json not found in {directory}");
        try { _tokenizer = new Tokenizer(vocabPath: tokenizerJson); }
        catch (Exception e) { throw new TokenizerLoadException($"{tokenizerJson}: {e.Message}"); }
        var root = JsonNode.Parse(File.ReadAllText(tokenizerJson));
        foreach (var added in root?["added_tokens"]?.AsArray() ?? [])
            if (added?["special"]?.GetValue<bool>() == true)
                _specialTokens[added["id"]!.GetValue<int>()] = added["content"]!.GetValue<string>();

        var configPath = Path.Combine(directory, "tokenizer_config.json");
        var config = File.Exists(configPath) ? JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject : null;
        BosToken = TokenContent(config?["bos_token"]) ?? "";
        EosToken = TokenContent(config?["eos_token"]) ?? "";
        BosId = IdOf(BosToken);
        EosId = IdOf(EosToken);
        if (config?["chat_template"] is JsonValue template && template.TryGetValue<string>(out var text))
            _chatTemplate = ChatTemplate.Parse(text);
        // The post-processor's special tokens (BOS for DeepSeek) that Encode puts in front of every text.
        _specialPrefix = _tokenizer.Encode("").Select(x => (int)x).ToArray();
    }

    public static GridTokenizer Load(string directory) => new(directory);

    static string? TokenContent(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };

    int? IdOf(string content)
    {
        foreach (var (id, text) in _specialTokens) if (text == content) return id;
        return null;
    }

    /// <summary>Text -> ids. With <paramref name="addSpecialTokens"/> the post-processor's tokens (BOS) are kept.</summary>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        uint[] raw;
        lock (_lock) raw = _tokenizer.Encode(text);
        var ids = raw.Select(x => (int)x).ToArray();
        if (!addSpecialTokens && ids.AsSpan().StartsWith(_specialPrefix)) ids = ids[_specialPrefix.Length..];
        return ids;
    }

    /// <summary>Ids -> text. Special tokens are skipped, or kept as their content (as Hugging Face's default decode does).</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true)
    {
        if (ids.Count == 0) return "";
        if (skipSpecialTokens || !ids.Any(_specialTokens.ContainsKey)) return DecodeRun(ids);
        var text = new System.Text.StringBuilder();
        var run = new List<int>();
        foreach (var id in ids)
        {
            if (!_specialTokens.TryGetValue(id, out var special)) { run.Add(id); continue; }
            text.Append(DecodeRun(run)).Append(special);
            run.Clear();
        }
        return text.Append(DecodeRun(run)).ToString();
    }

    string DecodeRun(IReadOnlyList<int> ids)
    {
        if (ids.Count == 0) return "";
        var raw = ids.Select(x => (uint)x).ToArray();
        lock (_lock) return _tokenizer.Decode(raw);
    }

    /// <summary>The text of one token as shown in logprobs: a special token's content, else its decoded bytes.</summary>
    public string TokenText(int id) => _specialTokens.TryGetValue(id, out var s) ? s : Decode([id]);

    /// <summary>Renders the chat template; the result already holds BOS, so encode it with addSpecialTokens false.</summary>
    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        if (_chatTemplate is null) throw new InvalidOperationException("this tokenizer has no chat_template");
        return _chatTemplate.Render(messages, addGenerationPrompt, BosToken, EosToken);
    }

    public int[] EncodeChat(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true) =>
        Encode(ApplyChatTemplate(messages, addGenerationPrompt), addSpecialTokens: false);

    public void Dispose() => _tokenizer.Dispose();
}

public sealed class TokenizerLoadException(string message) : Exception(message);
