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
    public int Mask(Span<float> logits)
    {
        if (Broken) return logits.Length;
        var allowed = new bool[logits.Length];
        int remaining = _maxTokens - Generated;   // tokens left, this one included
        int n = Fill(allowed, remaining);
        if (n == 0) n = Fill(allowed, int.MaxValue);
        if (_state.Accepting || n == 0)
            foreach (var e in _endTokens)
                if ((uint)e < (uint)allowed.Length && !allowed[e]) { allowed[e] = true; n++; }
        for (int i = 0; i < logits.Length; i++) if (!allowed[i]) logits[i] = float.NegativeInfinity;
        return n;
    }

    /// <summary>Marks every token that continues the document and still lets it finish within <paramref name="remaining"/> tokens.</summary>
    int Fill(bool[] allowed, int remaining)
    {
        int count = 0;
        // After this token, remaining - 1 tokens are left: the rest of the document (one token per byte at worst) and the end token.
        long room = remaining == int.MaxValue ? long.MaxValue : (long)remaining - 2;
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
