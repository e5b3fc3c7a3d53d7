namespace Grid.ModelCore.Structured;

/// <summary>
/// One sequence's structured-output state where it is sampled: the grammar (a compiled JSON schema) advanced by every
/// generated token, and the mask of the tokens that can continue a valid document. Tokens that would leave too few
/// tokens of the budget to finish the document (<see cref="GrammarState.Cost"/> bytes, each at most one token, plus the
/// end token) are masked too, so a document is complete within max_tokens whenever it can be. Once the document is
/// complete only the end tokens remain.
/// </summary>
public sealed class ConstrainedDecoder
{
    readonly TokenVocabulary _vocabulary;
    readonly int _maxTokens;
    readonly int[] _endTokens;
    GrammarState _state;

    public ConstrainedDecoder(SchemaNode grammar, TokenVocabulary vocabulary, int maxTokens, IReadOnlyList<int> endTokens)
    {
        _state = GrammarState.Start(grammar);
        _vocabulary = vocabulary;
        _maxTokens = maxTokens;
        _endTokens = endTokens.ToArray();
    }

    /// <summary>Generated tokens fed so far.</summary>
    public int Generated { get; private set; }
    /// <summary>A token outside the grammar was fed (it did not come from a masked draw): masking stops.</summary>
    public bool Broken { get; private set; }
    /// <summary>The document is complete.</summary>
    public bool Complete => _state.Accepting;

    /// <summary>Advances by a generated token.</summary>
    public void Feed(int token)
    {
        Generated++;
        if (Broken) return;
        if (_vocabulary.Bytes(token) is not { } bytes)
        {
            if (!_endTokens.Contains(token)) Broken = true;
            return;
        }
        var next = _state.Advance(bytes);
        if (next is null) Broken = true;
        else _state = next;
    }

    /// <summary>Sets the logits of tokens that cannot continue the document to -infinity; returns how many remain.</summary>
    public int Mask(Span<float> logits) => Mask(logits, reference: false);

    /// <summary>
    /// The same mask by the plain walk of the whole trie with a <see cref="GrammarState"/> per byte (the reference the
    /// fast path is tested against; slow on a real vocabulary).
    /// </summary>
    public int MaskReference(Span<float> logits) => Mask(logits, reference: true);

    int Mask(Span<float> logits, bool reference)
    {
        if (Broken) return logits.Length;
        var allowed = new bool[logits.Length];
        int remaining = _maxTokens - Generated;   // tokens left, this one included
        int n = reference ? FillReference(allowed, remaining) : Fill(allowed, remaining);
        if (n == 0) n = reference ? FillReference(allowed, int.MaxValue) : Fill(allowed, int.MaxValue);
        if (_state.Accepting || n == 0)
            foreach (var e in _endTokens)
                if ((uint)e < (uint)allowed.Length && !allowed[e]) { allowed[e] = true; n++; }
        for (int i = 0; i < logits.Length; i++) if (!allowed[i]) logits[i] = float.NegativeInfinity;
        return n;
    }

    /// <summary>After this token, remaining - 1 tokens are left: the rest of the document (one token per byte at worst) and the end token.</summary>
    static long Room(int remaining) => remaining == int.MaxValue ? long.MaxValue : (long)remaining - 2;

    /// <summary>The cost <see cref="GrammarState.Cost"/> gives a state of <paramref name="top"/> over a stack costing <paramref name="belowCost"/>.</summary>
    static int StackCost(int top, int belowCost) => (int)Math.Min(int.MaxValue / 4, (long)top + belowCost);

    /// <summary>
    /// Marks every token that continues the document and still lets it finish within <paramref name="remaining"/> tokens:
    /// <see cref="FillReference"/>'s answer, faster. Inside a string at rest the plain-byte tokens are taken by length
    /// (no walk), and only the other tokens' trie is walked; strings are walked with a <see cref="StringCursor"/> (a
    /// value) instead of a new state per byte.
    /// </summary>
    int Fill(bool[] allowed, int remaining)
    {
        int count = 0;
        long room = Room(remaining);
        if (_state.Top is StringFrame frame)
        {
            var below = _state.Below;
            int belowCost = below?.Cost ?? 0;
            var cursor = frame.Cursor;
            var trie = _vocabulary.Root;
            if (cursor.AtRest)
            {
                AddPlain(cursor, belowCost);
                trie = _vocabulary.ResidualRoot;
            }
            WalkString(trie, cursor, below, belowCost);
        }
        else Walk(_vocabulary.Root, _state);
        return count;

        void Add(int[] tokens)
        {
            foreach (var t in tokens)
                if ((uint)t < (uint)allowed.Length && !allowed[t]) { allowed[t] = true; count++; }
        }

        // n plain bytes take a string at rest to Count + n characters, still at rest.
        void AddPlain(StringCursor cursor, int belowCost)
        {
            var plain = _vocabulary.PlainTokens;
            var start = _vocabulary.PlainStart;
            for (int n = 1; n + 1 < start.Length; n++)
            {
                if ((long)cursor.Count + n > cursor.Max) break;
                var after = cursor with { Count = cursor.Count + n };
                if (StackCost(after.Cost, belowCost) > room) continue;
                for (int k = start[n]; k < start[n + 1]; k++)
                {
                    int t = plain[k];
                    if ((uint)t < (uint)allowed.Length && !allowed[t]) { allowed[t] = true; count++; }
                }
            }
        }

        void WalkString(TokenVocabulary.Node node, StringCursor cursor, GrammarState? below, int belowCost)
        {
            var edges = node.Edges;
            for (int i = 0; i < edges.Length; i++)
            {
                var result = cursor.Step(edges[i], out var next);
                if (result == StringCursor.Result.Reject) continue;
                var child = node.Children[i];
                if (result == StringCursor.Result.Close)
                {
                    var state = below ?? GrammarState.Done;
                    if (child.Tokens.Length > 0 && state.Cost <= room) Add(child.Tokens);
                    if (child.Edges.Length > 0) Walk(child, state);
                    continue;
                }
                if (child.Tokens.Length > 0 && StackCost(next.Cost, belowCost) <= room) Add(child.Tokens);
                if (child.Edges.Length > 0) WalkString(child, next, below, belowCost);
            }
        }

        void Walk(TokenVocabulary.Node node, GrammarState state)
        {
            var edges = node.Edges;
            for (int i = 0; i < edges.Length; i++)
            {
                var next = state.Advance(edges[i]);
                if (next is null) continue;
                var child = node.Children[i];
                if (child.Tokens.Length > 0 && next.Cost <= room) Add(child.Tokens);
                if (child.Edges.Length == 0) continue;
                if (next.Top is StringFrame s) WalkString(child, s.Cursor, next.Below, next.Below?.Cost ?? 0);
                else Walk(child, next);
            }
        }
    }

    /// <summary>The reference walk: every trie node the grammar lets through, one <see cref="GrammarState"/> per byte.</summary>
    int FillReference(bool[] allowed, int remaining)
    {
        int count = 0;
        long room = Room(remaining);
        Walk(_vocabulary.Root, _state);
        return count;

        void Walk(TokenVocabulary.Node node, GrammarState state)
        {
            var edges = node.Edges;
            for (int i = 0; i < edges.Length; i++)
            {
                var next = state.Advance(edges[i]);
                if (next is null) continue;
                var child = node.Children[i];
                if (child.Tokens.Length > 0 && next.Cost <= room)
                    foreach (var t in child.Tokens)
                        if ((uint)t < (uint)allowed.Length && !allowed[t]) { allowed[t] = true; count++; }
                if (child.Edges.Length > 0) Walk(child, next);
            }
        }
    }
}
