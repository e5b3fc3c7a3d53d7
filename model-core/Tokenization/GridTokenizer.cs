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
    /// <summary>
    /// The same tokenizer without its special added tokens: text in which special-token strings stay plain text. Null
    /// when it could not be written to the temporary folder (a read-only file system): see <see cref="EncodeBroken"/>.
    /// </summary>
    readonly Tokenizer? _plain;
    readonly object _lock = new();
    readonly Dictionary<int, string> _specialTokens = new();
    /// <summary>
    /// Each token's bytes (null for special tokens), when the decoder is plain byte-level BPE (DeepSeek's): decoding is
    /// then a table lookup plus UTF-8, without the library or its lock, and can run incrementally (<see cref="NewDecoder"/>).
    /// </summary>
    readonly byte[]?[]? _tokenBytes;
    readonly int[] _specialPrefix;
    readonly ChatTemplate? _chatTemplate;

    public string BosToken { get; }
    public string EosToken { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public bool HasChatTemplate => _chatTemplate is not null;

    GridTokenizer(string directory, string? chatTemplate)
    {
        var tokenizerJson = Path.Combine(directory, "tokenizer.json");
        if (!File.Exists(tokenizerJson)) throw new TokenizerLoadException($"tokenizer.json not found in {directory}");
        try { _tokenizer = new Tokenizer(vocabPath: tokenizerJson); }
        catch (Exception e) { throw new TokenizerLoadException($"{tokenizerJson}: {e.Message}"); }
        var root = JsonNode.Parse(File.ReadAllText(tokenizerJson));
        if (root?["model"]?["vocab"] is JsonObject vocab)
            foreach (var (piece, id) in vocab)
                if (id is JsonValue v && v.TryGetValue<int>(out var n)) _pieces.TryAdd(n, piece);
        foreach (var added in root?["added_tokens"]?.AsArray() ?? [])
            if (added?["id"] is JsonValue v && v.TryGetValue<int>(out var n) && added["content"] is JsonValue c && c.TryGetValue<string>(out var content))
                _pieces[n] = content;
        foreach (var added in root?["added_tokens"]?.AsArray() ?? [])
            if (added?["special"]?.GetValue<bool>() == true)
                _specialTokens[added["id"]!.GetValue<int>()] = added["content"]!.GetValue<string>();
        _plain = _specialTokens.Count == 0 ? _tokenizer : LoadWithoutSpecialTokens(root!);
        _tokenBytes = ByteTable(root!, _specialTokens);
        _specialStrings = _specialTokens.Values.Where(t => t.Length > 0).Distinct().OrderByDescending(t => t.Length).ToArray();
        _specialIds = _specialTokens.GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.Min(kv => kv.Key));

        var configPath = Path.Combine(directory, "tokenizer_config.json");
        var config = File.Exists(configPath) ? JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject : null;
        BosToken = TokenContent(config?["bos_token"]) ?? "";
        EosToken = TokenContent(config?["eos_token"]) ?? "";
        BosId = IdOf(BosToken);
        EosId = IdOf(EosToken);
        if (chatTemplate is not null) _chatTemplate = ChatTemplate.Parse(chatTemplate);
        else if (config?["chat_template"] is JsonValue template && template.TryGetValue<string>(out var text))
            _chatTemplate = ChatTemplate.Parse(text);
        // The post-processor's special tokens (BOS for DeepSeek) that Encode puts in front of every text.
        _specialPrefix = _tokenizer.Encode("").Select(x => (int)x).ToArray();
    }

    /// <param name="chatTemplate">A chat template (Jinja2 text) that replaces the checkpoint's <c>chat_template</c> (vLLM's <c>--chat-template</c>).</param>
    public static GridTokenizer Load(string directory, string? chatTemplate = null) => new(directory, chatTemplate);

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

    readonly string[] _specialStrings;
    readonly Dictionary<string, int> _specialIds;

    /// <summary>
    /// Text -> ids. With <paramref name="addSpecialTokens"/> the post-processor's tokens (BOS) are kept. With
    /// <paramref name="parseSpecialTokens"/> (Hugging Face's default) a special token's string in the text becomes that
    /// token; without it (text from a client: a completion prompt, chat content) it is tokenized as the plain text it is,
    /// so that no client can forge control tokens such as EOS or a role marker.
    /// </summary>
    public int[] Encode(string text, bool addSpecialTokens = true, bool parseSpecialTokens = true)
    {
        if (!parseSpecialTokens && _plain is null && HoldsSpecialToken(text)) return EncodeBroken(text, addSpecialTokens);
        var tokenizer = parseSpecialTokens ? _tokenizer : _plain ?? _tokenizer;
        uint[] raw;
        lock (_lock) raw = tokenizer.Encode(text);
        var ids = raw.Select(x => (int)x).ToArray();
        if (!addSpecialTokens && ids.AsSpan().StartsWith(_specialPrefix)) ids = ids[_specialPrefix.Length..];
        return ids;
    }

    /// <summary>
    /// Fallback without <see cref="_plain"/>: the text is cut after the first character of every special-token string in
    /// it and the pieces are encoded one by one, so that none of them can match a special token (the pieces around a cut
    /// may tokenize a little differently than whole text would, but never as control tokens).
    /// </summary>
    int[] EncodeBroken(string text, bool addSpecialTokens)
    {
        var cuts = new SortedSet<int>();
        foreach (var s in _specialStrings)
            for (int at = text.IndexOf(s, StringComparison.Ordinal); at >= 0; at = text.IndexOf(s, at + 1, StringComparison.Ordinal))
                cuts.Add(at + 1);
        var ids = new List<int>();
        if (addSpecialTokens) ids.AddRange(_specialPrefix);
        int start = 0;
        foreach (var cut in cuts.Append(text.Length))
        {
            if (cut > start) ids.AddRange(Encode(text[start..cut], addSpecialTokens: false));
            start = cut;
        }
        return ids.ToArray();
    }

    readonly Dictionary<int, string> _pieces = new();

    /// <summary>The token's string in the vocabulary (Hugging Face's <c>convert_ids_to_tokens</c>, e.g. "Ġthe"); null for an id it does not name.</summary>
    public string? TokenPiece(int id) => _pieces.GetValueOrDefault(id);

    /// <summary>The special tokens' strings (e.g. <c>&lt;｜end▁of▁sentence｜&gt;</c>), longest first.</summary>
    public IReadOnlyList<string> SpecialTokenStrings => _specialStrings;

    /// <summary>A copy of tokenizer.json without the special added tokens (non-special added tokens stay), loaded.</summary>
    static Tokenizer? LoadWithoutSpecialTokens(JsonNode root)
    {
        var copy = root.DeepClone();
        var added = copy["added_tokens"]!.AsArray();
        for (int i = added.Count - 1; i >= 0; i--)
            if (added[i]?["special"]?.GetValue<bool>() == true) added.RemoveAt(i);
        // The library loads from a path only: a private temporary file, deleted once read.
        var path = Path.Combine(Path.GetTempPath(), $"grid-tokenizer-{Guid.NewGuid():N}.json");
        try
        {
            File.WriteAllText(path, copy.ToJsonString());
            return new Tokenizer(vocabPath: path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        finally { try { File.Delete(path); } catch (IOException) { } }
    }

    /// <summary>
    /// Token id -> bytes for a byte-level BPE (decoder ByteLevel, no normalizer): each vocabulary character maps back to
    /// its byte through GPT-2's alphabet (a character outside it to its own UTF-8, as the library does). Null for other
    /// tokenizers, which decode through the library.
    /// </summary>
    internal static byte[]?[]? ByteTable(JsonNode root, Dictionary<int, string> special)
    {
        if (root["decoder"]?["type"]?.GetValue<string>() != "ByteLevel") return null;
        var normalizer = root["normalizer"];
        if (normalizer is not null && !(normalizer["type"]?.GetValue<string>() == "Sequence" && normalizer["normalizers"] is JsonArray { Count: 0 })) return null;
        if (root["model"]?["vocab"] is not JsonObject vocab) return null;
        var alphabet = ByteTokenizer.ByteAlphabet();
        var byteOf = new Dictionary<char, byte>();
        for (int b = 0; b < 256; b++) byteOf[alphabet[b]] = (byte)b;
        var pieces = new Dictionary<int, string>();
        foreach (var (piece, id) in vocab) pieces[id!.GetValue<int>()] = piece;
        foreach (var added in root["added_tokens"]?.AsArray() ?? [])
            pieces.TryAdd(added!["id"]!.GetValue<int>(), added["content"]!.GetValue<string>());
        if (pieces.Count == 0) return null;
        var table = new byte[]?[pieces.Keys.Max() + 1];
        var bytes = new List<byte>();
        var utf8 = new byte[4];
        foreach (var (id, piece) in pieces)
        {
            if (id < 0 || special.ContainsKey(id)) continue;
            bytes.Clear();
            foreach (var rune in piece.EnumerateRunes())
            {
                if (rune.IsBmp && byteOf.TryGetValue((char)rune.Value, out var b)) { bytes.Add(b); continue; }
                bytes.AddRange(utf8.AsSpan(0, rune.EncodeToUtf8(utf8)));
            }
            table[id] = bytes.ToArray();
        }
        return table;
    }

    static readonly System.Text.UTF8Encoding Utf8Lossy = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

    /// <summary>An incremental decoder for one sequence of generated tokens (see <see cref="IncrementalDecoder"/>).</summary>
    public IncrementalDecoder NewDecoder() => new(this);

    /// <summary>
    /// Decodes one sequence token by token: each <see cref="Add"/> returns only the new text (an incomplete UTF-8
    /// character is held until its last byte arrives), without re-decoding what came before. With a byte table this takes
    /// no lock and costs the token's own bytes; otherwise it falls back to decoding the whole sequence through the library.
    /// </summary>
    public sealed class IncrementalDecoder
    {
        readonly GridTokenizer _owner;
        readonly System.Text.Decoder? _utf8;
        readonly List<int>? _ids;
        int _emitted;
        char[] _chars = new char[16];

        internal IncrementalDecoder(GridTokenizer owner)
        {
            _owner = owner;
            if (owner._tokenBytes is not null) _utf8 = Utf8Lossy.GetDecoder();
            else _ids = new List<int>();
        }

        /// <summary>Adds a token; returns the text it completes (may be empty). Special tokens add nothing.</summary>
        public string Add(int id)
        {
            if (_utf8 is not null)
            {
                var table = _owner._tokenBytes!;
                var bytes = (uint)id < (uint)table.Length ? table[id] : null;
                return bytes is null ? "" : Chars(bytes, flush: false);
            }
            _ids!.Add(id);
            var full = _owner.Decode(_ids);
            if (full.EndsWith('\uFFFD') || full.Length < _emitted) return "";   // wait for the rest of a multi-byte character
            var delta = full[_emitted..];
            _emitted = full.Length;
            return delta;
        }

        /// <summary>At the end: what an incomplete character left (U+FFFD), or nothing.</summary>
        public string Flush()
        {
            if (_utf8 is not null) return Chars([], flush: true);
            var full = _owner.Decode(_ids!);
            if (full.Length <= _emitted) return "";
            var delta = full[_emitted..];
            _emitted = full.Length;
            return delta;
        }

        string Chars(byte[] bytes, bool flush)
        {
            int need = _utf8!.GetCharCount(bytes, flush: false) + 4;
            if (_chars.Length < need) _chars = new char[Math.Max(need, _chars.Length * 2)];
            int n = _utf8.GetChars(bytes, 0, bytes.Length, _chars, 0, flush);
            return n == 0 ? "" : new string(_chars, 0, n);
        }
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
        if (_tokenBytes is { } table)
        {
            var bytes = new List<byte>(ids.Count * 4);
            foreach (var id in ids)
                if ((uint)id < (uint)table.Length && table[id] is { } b) bytes.AddRange(b);
            return Utf8Lossy.GetString(bytes.ToArray());
        }
        return DecodeWithLibrary(ids);
    }

    /// <summary>Ids -> text through the tokenizers library (special tokens skipped); the reference the byte table matches.</summary>
    public string DecodeWithLibrary(IReadOnlyList<int> ids)
    {
        if (ids.Count == 0) return "";
        var raw = ids.Select(x => (uint)x).ToArray();
        lock (_lock) return _tokenizer.Decode(raw);
    }

    /// <summary>Each token's bytes (null for special tokens), or null when the vocabulary is not byte-level BPE.</summary>
    public IReadOnlyList<byte[]?>? TokenBytes => _tokenBytes;

    /// <summary>Whether decoding runs from the byte table (lock-free) rather than through the library.</summary>
    public bool DecodesFromByteTable => _tokenBytes is not null;

    /// <summary>The text of one token as shown in logprobs: a special token's content, else its decoded bytes.</summary>
    public string TokenText(int id) => _specialTokens.TryGetValue(id, out var s) ? s : Decode([id]);

    /// <summary>Renders the chat template; the result already holds BOS, so encode it with addSpecialTokens false.</summary>
    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, IReadOnlyDictionary<string, object?>? variables = null)
    {
        if (_chatTemplate is null) throw new InvalidOperationException("this tokenizer has no chat_template");
        return _chatTemplate.Render(messages, addGenerationPrompt, BosToken, EosToken, variables);
    }

    /// <summary>Whether the chat template reads <paramref name="name"/> (<c>tools</c>, <c>tool_calls</c>); false without a template.</summary>
    public bool ChatTemplateMentions(string name) => _chatTemplate?.Mentions(name) == true;

    /// <summary>Whether the chat template contains <paramref name="text"/> (a special token it writes, say).</summary>
    public bool ChatTemplateContains(string text) => _chatTemplate?.Source.Contains(text, StringComparison.Ordinal) == true;

    /// <summary>
    /// Renders the chat template and tokenizes it. The template's own special tokens (BOS, EOS, role markers) become
    /// control tokens; special-token strings inside message content stay plain text (no role spoofing). When no content
    /// holds one, this is the plain rendering encoded as Hugging Face does.
    /// </summary>
    /// <exception cref="ChatTemplateException">Content holds a special-token string and the template rewrites content, so
    /// its place in the prompt cannot be told apart from the template's.</exception>
    public int[] EncodeChat(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, IReadOnlyDictionary<string, object?>? variables = null)
    {
        var text = ApplyChatTemplate(messages, addGenerationPrompt, variables);
        if (!messages.Any(m => HoldsSpecialToken(m.Content))) return Encode(text, addSpecialTokens: false);

        // Render once more with each content between two markers to learn which characters of the prompt are content.
        const char open = '\uFDD0', close = '\uFDD1';   // Unicode noncharacters
        if (messages.Any(m => m.Content.Contains(open) || m.Content.Contains(close)))
            throw new ChatTemplateException("message content holds both a special-token string and the noncharacter U+FDD0/U+FDD1");
        var marked = ApplyChatTemplate(messages.Select(m => m with { Content = open + m.Content + close }).ToArray(), addGenerationPrompt, variables);
        var plain = new System.Text.StringBuilder(text.Length);
        var inContent = new List<bool>(text.Length);
        int depth = 0;
        foreach (var c in marked)
        {
            if (c == open) { depth++; continue; }
            if (c == close) { depth = Math.Max(0, depth - 1); continue; }
            plain.Append(c);
            inContent.Add(depth > 0);
        }
        if (plain.ToString() != text)
            throw new ChatTemplateException("message content holds a special-token string, and this chat template rewrites content, so it cannot be kept plain");

        // Split at the template's special tokens (leftmost, longest first, as Hugging Face), each run of text between
        // them tokenized without parsing special tokens.
        var ids = new List<int>();
        int start = 0, at = 0;
        while (at < text.Length)
        {
            string? hit = null;
            if (!inContent[at])
                foreach (var s in _specialStrings)
                    if (text[at] == s[0] && string.CompareOrdinal(text, at, s, 0, s.Length) == 0 && !inContent.GetRange(at, s.Length).Contains(true)) { hit = s; break; }
            if (hit is null) { at++; continue; }
            if (at > start) ids.AddRange(Encode(text[start..at], addSpecialTokens: false, parseSpecialTokens: false));
            ids.Add(_specialIds[hit]);
            at += hit.Length;
            start = at;
        }
        if (start < text.Length) ids.AddRange(Encode(text[start..], addSpecialTokens: false, parseSpecialTokens: false));
        return ids.ToArray();
    }

    bool HoldsSpecialToken(string text)
    {
        foreach (var s in _specialStrings) if (text.Contains(s, StringComparison.Ordinal)) return true;
        return false;
    }

    public void Dispose()
    {
        if (_plain is not null && !ReferenceEquals(_plain, _tokenizer)) _plain.Dispose();
        _tokenizer.Dispose();
    }
}

public sealed class TokenizerLoadException(string message) : Exception(message);
