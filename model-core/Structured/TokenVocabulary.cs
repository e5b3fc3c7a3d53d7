using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Grid.ModelCore.Tokenization;

namespace Grid.ModelCore.Structured;

/// <summary>
/// A byte-level vocabulary for constrained decoding: each token's bytes and a trie over them, built once per model (a
/// mask walks the trie with the grammar state, so a token sharing a rejected prefix is never looked at).
/// </summary>
public sealed class TokenVocabulary
{
    internal sealed class Node
    {
        public byte[] Edges = [];
        public Node[] Children = [];
        public int[] Tokens = [];
    }

    readonly byte[]?[] _bytes;
    internal Node Root { get; }
    /// <summary>The trie of the tokens that are not <see cref="PlainTokens"/> (what a mask inside a string still walks).</summary>
    internal Node ResidualRoot { get; }
    /// <summary>
    /// The tokens made only of plain string bytes (<see cref="StringCursor.IsPlain"/>), by length: those of length
    /// <c>n</c> are <c>PlainTokens[PlainStart[n]..PlainStart[n + 1]]</c>. Inside a string at rest each such token is
    /// <c>n</c> characters and cannot close the string, so whether it is allowed depends on its length alone.
    /// </summary>
    internal int[] PlainTokens { get; }
    internal int[] PlainStart { get; }
    public int Count => _bytes.Length;

    public TokenVocabulary(IReadOnlyList<byte[]?> tokenBytes)
    {
        _bytes = tokenBytes.ToArray();
        Root = Build(_bytes, _ => true);
        var plain = new List<int>();
        for (int id = 0; id < _bytes.Length; id++)
            if (_bytes[id] is { Length: > 0 } b && b.All(StringCursor.IsPlain)) plain.Add(id);
        var plainSet = plain.ToHashSet();
        ResidualRoot = Build(_bytes, id => !plainSet.Contains(id));
        PlainTokens = plain.OrderBy(id => _bytes[id]!.Length).ThenBy(id => id).ToArray();
        int longest = PlainTokens.Length == 0 ? 0 : _bytes[PlainTokens[^1]]!.Length;
        PlainStart = new int[longest + 2];
        int k = 0;
        for (int n = 0; n <= longest + 1; n++)
        {
            while (k < PlainTokens.Length && _bytes[PlainTokens[k]]!.Length < n) k++;
            PlainStart[n] = k;
        }
    }

    /// <summary>The token's bytes; null for special tokens and ids outside the vocabulary.</summary>
    public byte[]? Bytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id] : null;

    static readonly ConcurrentDictionary<string, Lazy<TokenVocabulary?>> ByDirectory = new();

    /// <summary>
    /// The vocabulary of the checkpoint folder's <c>tokenizer.json</c> (memoized per folder); null when it is missing or
    /// not byte-level BPE.
    /// </summary>
    public static TokenVocabulary? ForDirectory(string directory) =>
        ByDirectory.GetOrAdd(Path.GetFullPath(directory), d => new Lazy<TokenVocabulary?>(() => Load(d))).Value;

    static TokenVocabulary? Load(string directory)
    {
        var path = Path.Combine(directory, "tokenizer.json");
        if (!File.Exists(path)) return null;
        var root = JsonNode.Parse(File.ReadAllText(path))!;
        var special = new Dictionary<int, string>();
        foreach (var added in root["added_tokens"]?.AsArray() ?? [])
            if (added?["special"]?.GetValue<bool>() == true) special[added["id"]!.GetValue<int>()] = added["content"]!.GetValue<string>();
        var table = GridTokenizer.ByteTable(root, special);
        return table is null ? null : new TokenVocabulary(table);
    }

    sealed class Builder
    {
        public readonly SortedDictionary<byte, Builder> Children = new();
        public readonly List<int> Tokens = new();
    }

    static Node Build(byte[]?[] bytes, Func<int, bool> include)
    {
        var root = new Builder();
        for (int id = 0; id < bytes.Length; id++)
        {
            if (bytes[id] is not { Length: > 0 } b || !include(id)) continue;
            var n = root;
            foreach (var x in b)
            {
                if (!n.Children.TryGetValue(x, out var child)) n.Children[x] = child = new Builder();
                n = child;
            }
            n.Tokens.Add(id);
        }
        return Freeze(root);
    }

    static Node Freeze(Builder b) => new()
    {
        Edges = b.Children.Keys.ToArray(),
        Children = b.Children.Values.Select(Freeze).ToArray(),
        Tokens = b.Tokens.ToArray(),
    };
}
