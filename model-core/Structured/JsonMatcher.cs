namespace Grid.ModelCore.Structured;

/// <summary>What a frame does with a byte.</summary>
public enum MoveKind : byte
{
    Reject,
    /// <summary>The byte is consumed; the frame becomes <see cref="Move.Frame"/>.</summary>
    Replace,
    /// <summary>The byte is consumed; the frame becomes <see cref="Move.Frame"/> and <see cref="Move.Child"/> goes on top.</summary>
    Push,
    /// <summary>The frame becomes <see cref="Move.Frame"/>, <see cref="Move.Child"/> goes on top and gets the byte.</summary>
    PushRetry,
    /// <summary>The byte is consumed and completes the frame.</summary>
    Pop,
    /// <summary>The frame was complete already (a number); its parent gets the byte.</summary>
    PopRetry,
}

public readonly record struct Move(MoveKind Kind, GrammarFrame? Frame = null, GrammarFrame? Child = null)
{
    public static readonly Move Reject = new(MoveKind.Reject);
    public static readonly Move Pop = new(MoveKind.Pop);
    public static readonly Move PopRetry = new(MoveKind.PopRetry);
    public static Move To(GrammarFrame f) => new(MoveKind.Replace, f);
}

/// <summary>One level of the pushdown matcher: immutable, so a state can be shared while the token trie is explored.</summary>
public abstract class GrammarFrame
{
    public abstract Move Step(byte b);
    /// <summary>Fewest bytes that complete this frame (not counting what frames below it still need).</summary>
    public abstract int Cost { get; }
    /// <summary>The frame may end here without another byte (a number).</summary>
    public virtual bool CanEnd => false;

    /// <summary>
    /// Whitespace runs between tokens are bounded (compact output, a newline and a space at most) so that a model that
    /// prefers whitespace still makes progress and a document always ends.
    /// </summary>
    public const int MaxWhitespace = 2;
    internal static bool IsSpace(byte b) => b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r';
}

/// <summary>
/// A matcher state: a stack of frames (immutable, shared). <see cref="Done"/> is a complete document. Advancing by a byte
/// returns the new state, or null when the byte cannot continue a valid document.
/// </summary>
public sealed class GrammarState
{
    public GrammarFrame? Top { get; }
    public GrammarState? Below { get; }
    int _cost = -1;

    GrammarState(GrammarFrame? top, GrammarState? below) { Top = top; Below = below; }

    public static readonly GrammarState Done = new(null, null);

    public static GrammarState Start(SchemaNode root) => new(new ValueFrame(root, 0), null);

    /// <summary>Fewest bytes that complete the document from here.</summary>
    public int Cost
    {
        get
        {
            if (_cost < 0) _cost = Top is null ? 0 : (int)Math.Min(int.MaxValue / 4, (long)Top.Cost + (Below?.Cost ?? 0));
            return _cost;
        }
    }

    /// <summary>The document is complete here (the end token may follow).</summary>
    public bool Accepting => Top is null || (Below is null && Top.CanEnd);

    public GrammarState? Advance(byte b)
    {
        var s = this;
        while (true)
        {
            if (s.Top is null) return null;
            var m = s.Top.Step(b);
            switch (m.Kind)
            {
                case MoveKind.Replace: return new GrammarState(m.Frame, s.Below);
                case MoveKind.Push: return new GrammarState(m.Child, new GrammarState(m.Frame, s.Below));
                case MoveKind.PushRetry: s = new GrammarState(m.Child, new GrammarState(m.Frame, s.Below)); continue;
                case MoveKind.Pop: return s.Below ?? Done;
                case MoveKind.PopRetry:
                    if (s.Below is null) return null;
                    s = s.Below;
                    continue;
                default: return null;
            }
        }
    }

    public GrammarState? Advance(ReadOnlySpan<byte> bytes)
    {
        GrammarState? s = this;
        foreach (var b in bytes)
        {
            s = s.Advance(b);
            if (s is null) return null;
        }
        return s;
    }

    /// <summary>Whether <paramref name="text"/> is a complete document of <paramref name="root"/> (for tests and checks).</summary>
    public static bool Accepts(SchemaNode root, ReadOnlySpan<byte> text) => Start(root).Advance(text)?.Accepting == true;
}

/// <summary>A value about to start (leading whitespace allowed): its first byte picks the frame.</summary>
sealed class ValueFrame(SchemaNode schema, int ws) : GrammarFrame
{
    public override int Cost => schema.MinBytes;

    public override Move Step(byte b)
    {
        if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(new ValueFrame(schema, ws + 1)) : Move.Reject;
        return Begin(schema, b);
    }

    public static Move Begin(SchemaNode node, byte b)
    {
        var n = node.Resolved;
        switch (n.Kind)
        {
            case SchemaKind.Object: return b == '{' ? Move.To(new ObjectFrame(n, ObjectFrame.Phase.Open, 0, 0, [], 0, -1)) : Move.Reject;
            case SchemaKind.Array: return b == '[' ? Move.To(new ArrayFrame(n, ArrayFrame.Phase.Open, 0, 0)) : Move.Reject;
            case SchemaKind.String: return b == '"' ? Move.To(new StringFrame(n.MinLength, n.MaxLength)) : Move.Reject;
            case SchemaKind.Number: return NumberFrame.Begin(b, integer: false);
            case SchemaKind.Integer: return NumberFrame.Begin(b, integer: true);
            case SchemaKind.Boolean: return LiteralFrame.Begin(LiteralFrame.Booleans, b);
            case SchemaKind.Null: return LiteralFrame.Begin(LiteralFrame.Null, b);
            case SchemaKind.Literals: return LiteralFrame.Begin(n.Literals, b);
            case SchemaKind.Tagged: return new TaggedFrame(n, Enumerable.Range(0, n.Branches.Length).ToArray(), 0).Step(b);
            case SchemaKind.Union:
                foreach (var alt in n.Alternatives)
                {
                    var m = Begin(alt, b);
                    if (m.Kind != MoveKind.Reject) return m;
                }
                return Move.Reject;
            default:
                return b switch
                {
                    (byte)'{' => Move.To(new ObjectFrame(AnyObject, ObjectFrame.Phase.Open, 0, 0, [], 0, -1)),
                    (byte)'[' => Move.To(new ArrayFrame(AnyArray, ArrayFrame.Phase.Open, 0, 0)),
                    (byte)'"' => Move.To(new StringFrame(0, int.MaxValue)),
                    (byte)'t' or (byte)'f' or (byte)'n' => LiteralFrame.Begin(LiteralFrame.Words, b),
                    _ => NumberFrame.Begin(b, integer: false),
                };
        }
    }

    static readonly SchemaNode AnyObject = new() { Kind = SchemaKind.Object, FreeKeys = true, MinBytes = 2 };
    static readonly SchemaNode AnyArray = new() { Kind = SchemaKind.Array, Items = SchemaNode.Any, MinBytes = 2 };
}

/// <summary>An object: keys of a schema object in schema order (optional ones may be skipped), or any keys.</summary>
sealed class ObjectFrame(SchemaNode node, ObjectFrame.Phase phase, int next, int ws, int[] candidates, int matched, int chosen) : GrammarFrame
{
    public enum Phase : byte { Open, AfterComma, Key, Colon, AfterValue }

    ObjectFrame With(Phase p, int nextIndex, int w, int[] cands, int m, int c) => new(node, p, nextIndex, w, cands, m, c);

    /// <summary>Properties that may come next: from <paramref name="from"/> up to and including the first required one.</summary>
    int[] Candidates(int from)
    {
        var props = node.Properties;
        var list = new List<int>();
        for (int i = from; i < props.Length; i++)
        {
            list.Add(i);
            if (props[i].Required) break;
        }
        return list.ToArray();
    }

    bool RequiredLeft(int from)
    {
        var props = node.Properties;
        for (int i = from; i < props.Length; i++) if (props[i].Required) return true;
        return false;
    }

    /// <summary>Bytes for the required properties from <paramref name="from"/> on and the closing brace.</summary>
    int Rest(int from, bool first)
    {
        long sum = 1;
        var props = node.Properties;
        for (int i = from; i < props.Length; i++)
            if (props[i].Required)
            {
                sum += (first ? 0 : 1) + props[i].Key.Length + 1 + props[i].Schema.MinBytes;
                first = false;
            }
        return (int)Math.Min(sum, int.MaxValue / 8);
    }

    int Through(int c, int matchedBytes) =>
        node.Properties[c].Key.Length - matchedBytes + 1 + node.Properties[c].Schema.MinBytes + Rest(c + 1, first: false);

    public override int Cost
    {
        get
        {
            if (node.FreeKeys)
                return phase switch { Phase.AfterComma => 5, Phase.Colon => 3, _ => 1 };
            switch (phase)
            {
                case Phase.Open: return Rest(0, first: true);
                case Phase.AfterValue: return Rest(next, first: false);
                case Phase.Colon: return 1 + node.Properties[chosen].Schema.MinBytes + Rest(next, first: false);
                case Phase.AfterComma:
                {
                    int best = int.MaxValue;
                    foreach (var c in Candidates(next)) best = Math.Min(best, Through(c, 0));
                    return best;
                }
                default:
                {
                    int best = int.MaxValue;
                    foreach (var c in candidates) best = Math.Min(best, Through(c, matched));
                    return best;
                }
            }
        }
    }

    public override Move Step(byte b)
    {
        switch (phase)
        {
            case Phase.Open:
            case Phase.AfterComma:
                if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(With(phase, next, ws + 1, candidates, 0, chosen)) : Move.Reject;
                if (b == '}' && phase == Phase.Open) return node.FreeKeys || !RequiredLeft(0) ? Move.Pop : Move.Reject;
                if (b != '"') return Move.Reject;
                if (node.FreeKeys) return new Move(MoveKind.Push, With(Phase.Colon, 0, 0, [], 0, -1), new StringFrame(0, int.MaxValue));
                var cands = Candidates(next);
                return cands.Length == 0 ? Move.Reject : Move.To(With(Phase.Key, next, 0, cands, 1, -1));
            case Phase.Key:
            {
                var props = node.Properties;
                int keep = 0, done = -1;
                foreach (var c in candidates)
                    if (props[c].Key.Length > matched && props[c].Key[matched] == b)
                    {
                        keep++;
                        if (props[c].Key.Length == matched + 1) done = c;
                    }
                if (keep == 0) return Move.Reject;
                if (done >= 0) return Move.To(With(Phase.Colon, done + 1, 0, [], 0, done));
                var left = new int[keep];
                int k = 0;
                foreach (var c in candidates)
                    if (props[c].Key.Length > matched && props[c].Key[matched] == b) left[k++] = c;
                return Move.To(With(Phase.Key, next, 0, left, matched + 1, -1));
            }
            case Phase.Colon:
                if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(With(phase, next, ws + 1, [], 0, chosen)) : Move.Reject;
                if (b != ':') return Move.Reject;
                var value = node.FreeKeys ? SchemaNode.Any : node.Properties[chosen].Schema;
                return new Move(MoveKind.Push, With(Phase.AfterValue, next, 0, [], 0, -1), new ValueFrame(value, 0));
            default:
                if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(With(phase, next, ws + 1, [], 0, -1)) : Move.Reject;
                if (b == ',') return node.FreeKeys || next < node.Properties.Length ? Move.To(With(Phase.AfterComma, next, 0, [], 0, -1)) : Move.Reject;
                if (b == '}') return node.FreeKeys || !RequiredLeft(next) ? Move.Pop : Move.Reject;
                return Move.Reject;
        }
    }
}

/// <summary>
/// The opening of one of a <see cref="SchemaKind.Tagged"/> union's objects, byte by byte up to the end of its tag (the
/// prefixes end with a closing quote, so at most one completes); then that object goes on after its first property.
/// </summary>
sealed class TaggedFrame(SchemaNode node, int[] candidates, int matched) : GrammarFrame
{
    public override int Cost
    {
        get
        {
            int best = int.MaxValue;
            foreach (var c in candidates) best = Math.Min(best, node.Branches[c].Prefix.Length - matched + node.Branches[c].RestBytes);
            return best;
        }
    }

    public override Move Step(byte b)
    {
        var branches = node.Branches;
        int keep = 0, done = -1;
        foreach (var c in candidates)
            if (branches[c].Prefix[matched] == b)
            {
                keep++;
                if (branches[c].Prefix.Length == matched + 1) done = c;
            }
        if (keep == 0) return Move.Reject;
        if (done >= 0) return Move.To(new ObjectFrame(branches[done].Object, ObjectFrame.Phase.AfterValue, 1, 0, [], 0, -1));
        var left = new int[keep];
        int k = 0;
        foreach (var c in candidates)
            if (branches[c].Prefix[matched] == b) left[k++] = c;
        return Move.To(new TaggedFrame(node, left, matched + 1));
    }
}

/// <summary>An array of <see cref="SchemaNode.Items"/> within minItems..maxItems.</summary>
sealed class ArrayFrame(SchemaNode node, ArrayFrame.Phase phase, int count, int ws) : GrammarFrame
{
    public enum Phase : byte { Open, AfterComma, AfterValue }

    SchemaNode Items => node.Items ?? SchemaNode.Any;

    public override int Cost
    {
        get
        {
            long item = Items.MinBytes;
            long need = Math.Max(0, node.MinItems - count);
            long cost = phase switch
            {
                Phase.Open => need == 0 ? 1 : need * item + need - 1 + 1,
                Phase.AfterValue => need * (item + 1) + 1,
                _ => Math.Max(1, need) * (item + 1) - 1 + 1,
            };
            return (int)Math.Min(cost, int.MaxValue / 8);
        }
    }

    public override Move Step(byte b)
    {
        switch (phase)
        {
            case Phase.Open:
                if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(new ArrayFrame(node, phase, count, ws + 1)) : Move.Reject;
                if (b == ']') return node.MinItems == 0 ? Move.Pop : Move.Reject;
                if (node.MaxItems == 0) return Move.Reject;
                return new Move(MoveKind.PushRetry, new ArrayFrame(node, Phase.AfterValue, 1, 0), new ValueFrame(Items, 0));
            case Phase.AfterComma:
                return new Move(MoveKind.PushRetry, new ArrayFrame(node, Phase.AfterValue, count + 1, 0), new ValueFrame(Items, 0));
            default:
                if (IsSpace(b)) return ws < MaxWhitespace ? Move.To(new ArrayFrame(node, phase, count, ws + 1)) : Move.Reject;
                if (b == ',') return count < node.MaxItems ? Move.To(new ArrayFrame(node, Phase.AfterComma, count, 0)) : Move.Reject;
                if (b == ']') return count >= node.MinItems ? Move.Pop : Move.Reject;
                return Move.Reject;
        }
    }
}

/// <summary>
/// Where a string stands after its opening quote (a value: the mask walks strings with it without allocating):
/// UTF-8 checked byte by byte, escapes (\uXXXX without surrogates), no control characters; the characters are bounded
/// by min..max (an escape or a multi-byte character counts one).
/// </summary>
public readonly record struct StringCursor(int Min, int Max, int Count, byte Need, byte Lo, byte Hi, sbyte Escape)
{
    public enum Result : byte { Reject, Continue, Close }

    public static StringCursor Open(int min, int max) => new(min, max, 0, 0, 0x80, 0xBF, 0);

    /// <summary>Between characters: the next byte starts a character, an escape or closes the string.</summary>
    public bool AtRest => Need == 0 && Escape == 0;

    /// <summary>Fewest bytes that close the string from here (the closing quote included).</summary>
    public int Cost => Need + (Escape < 0 ? 1 : Escape) + Math.Max(0, Min - Count) + 1;

    StringCursor With(int count, byte need = 0, byte lo = 0x80, byte hi = 0xBF, sbyte escape = 0) => new(Min, Max, count, need, lo, hi, escape);

    /// <summary>A byte that is a whole character inside a string at rest and never closes or escapes (printable ASCII but <c>"</c> and <c>\</c>).</summary>
    public static bool IsPlain(byte b) => b >= 0x20 && b < 0x80 && b != (byte)'"' && b != (byte)'\\';

    /// <summary>Advances by <paramref name="b"/>: the new cursor (<see cref="Result.Continue"/>), the closing quote, or a reject.</summary>
    public Result Step(byte b, out StringCursor next)
    {
        next = this;
        if (Need > 0)
        {
            if (b < Lo || b > Hi) return Result.Reject;
            next = With(Count, (byte)(Need - 1));
            return Result.Continue;
        }
        if (Escape < 0)
        {
            if (b == 'u') { next = With(Count, escape: 4); return Result.Continue; }
            if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { next = With(Count); return Result.Continue; }
            return Result.Reject;
        }
        if (Escape > 0)
        {
            bool hex = b is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'f' or >= (byte)'A' and <= (byte)'F';
            // No \uD800-\uDFFF (nor the rest of \uDxxx): a lone surrogate is no text.
            if (!hex || (Escape == 4 && b is (byte)'d' or (byte)'D')) return Result.Reject;
            next = With(Count, escape: (sbyte)(Escape - 1));
            return Result.Continue;
        }
        if (b == '"') return Count >= Min ? Result.Close : Result.Reject;
        if (b < 0x20 || Count >= Max) return Result.Reject;
        if (b == '\\') { next = With(Count + 1, escape: -1); return Result.Continue; }
        if (b < 0x80) { next = With(Count + 1); return Result.Continue; }
        switch (b)
        {
            case >= 0xC2 and <= 0xDF: next = With(Count + 1, 1); return Result.Continue;
            case 0xE0: next = With(Count + 1, 2, 0xA0, 0xBF); return Result.Continue;
            case >= 0xE1 and <= 0xEC or 0xEE or 0xEF: next = With(Count + 1, 2); return Result.Continue;
            case 0xED: next = With(Count + 1, 2, 0x80, 0x9F); return Result.Continue;
            case 0xF0: next = With(Count + 1, 3, 0x90, 0xBF); return Result.Continue;
            case >= 0xF1 and <= 0xF3: next = With(Count + 1, 3); return Result.Continue;
            case 0xF4: next = With(Count + 1, 3, 0x80, 0x8F); return Result.Continue;
            default: return Result.Reject;
        }
    }
}

/// <summary>Inside a string (after the opening quote): see <see cref="StringCursor"/>.</summary>
sealed class StringFrame : GrammarFrame
{
    public StringCursor Cursor { get; }

    public StringFrame(int min, int max) : this(StringCursor.Open(min, max)) { }

    public StringFrame(StringCursor cursor) { Cursor = cursor; }

    public override int Cost => Cursor.Cost;

    public override Move Step(byte b) => Cursor.Step(b, out var next) switch
    {
        StringCursor.Result.Continue => Move.To(new StringFrame(next)),
        StringCursor.Result.Close => Move.Pop,
        _ => Move.Reject,
    };
}

/// <summary>A JSON number (an integer: no fraction or exponent), with bounded digit runs so that it always ends.</summary>
sealed class NumberFrame(bool integer, NumberFrame.Phase phase, int digits) : GrammarFrame
{
    public enum Phase : byte { Sign, Zero, Int, Dot, Frac, Exp, ExpSign, ExpDigits }

    public const int MaxIntDigits = 12, MaxFracDigits = 6, MaxExpDigits = 2;

    public override bool CanEnd => phase is Phase.Zero or Phase.Int or Phase.Frac or Phase.ExpDigits;
    public override int Cost => CanEnd ? 0 : 1;

    static bool Digit(byte b) => b is >= (byte)'0' and <= (byte)'9';

    public static Move Begin(byte b, bool integer) => b switch
    {
        (byte)'-' => Move.To(new NumberFrame(integer, Phase.Sign, 0)),
        (byte)'0' => Move.To(new NumberFrame(integer, Phase.Zero, 1)),
        >= (byte)'1' and <= (byte)'9' => Move.To(new NumberFrame(integer, Phase.Int, 1)),
        _ => Move.Reject,
    };

    NumberFrame To(Phase p, int d) => new(integer, p, d);

    public override Move Step(byte b)
    {
        switch (phase)
        {
            case Phase.Sign:
                return b == '0' ? Move.To(To(Phase.Zero, 1)) : Digit(b) ? Move.To(To(Phase.Int, 1)) : Move.Reject;
            case Phase.Zero:
            case Phase.Int:
                if (Digit(b)) return phase == Phase.Int && digits < MaxIntDigits ? Move.To(To(Phase.Int, digits + 1)) : Move.Reject;
                if (b == '.' && !integer) return Move.To(To(Phase.Dot, 0));
                if (b is (byte)'e' or (byte)'E' && !integer) return Move.To(To(Phase.Exp, 0));
                return Move.PopRetry;
            case Phase.Dot:
                return Digit(b) ? Move.To(To(Phase.Frac, 1)) : Move.Reject;
            case Phase.Frac:
                if (Digit(b)) return digits < MaxFracDigits ? Move.To(To(Phase.Frac, digits + 1)) : Move.Reject;
                if (b is (byte)'e' or (byte)'E') return Move.To(To(Phase.Exp, 0));
                return Move.PopRetry;
            case Phase.Exp:
                if (b is (byte)'+' or (byte)'-') return Move.To(To(Phase.ExpSign, 0));
                return Digit(b) ? Move.To(To(Phase.ExpDigits, 1)) : Move.Reject;
            case Phase.ExpSign:
                return Digit(b) ? Move.To(To(Phase.ExpDigits, 1)) : Move.Reject;
            default:
                if (Digit(b)) return digits < MaxExpDigits ? Move.To(To(Phase.ExpDigits, digits + 1)) : Move.Reject;
                return Move.PopRetry;
        }
    }
}

/// <summary>One of a set of literal byte strings (true/false/null, enum and const values).</summary>
sealed class LiteralFrame(byte[][] options, int matched) : GrammarFrame
{
    public static readonly byte[][] Booleans = ["true"u8.ToArray(), "false"u8.ToArray()];
    public static readonly byte[][] Null = ["null"u8.ToArray()];
    public static readonly byte[][] Words = ["true"u8.ToArray(), "false"u8.ToArray(), "null"u8.ToArray()];

    public override bool CanEnd
    {
        get
        {
            foreach (var o in options) if (o.Length == matched) return true;
            return false;
        }
    }

    public override int Cost
    {
        get
        {
            int best = int.MaxValue;
            foreach (var o in options) best = Math.Min(best, o.Length - matched);
            return best;
        }
    }

    public static Move Begin(byte[][] all, byte b)
    {
        var m = new LiteralFrame(all, 0).Step(b);
        return m.Kind == MoveKind.PopRetry ? Move.Reject : m;
    }

    public override Move Step(byte b)
    {
        int keep = 0;
        bool longer = false;
        foreach (var o in options)
            if (o.Length > matched && o[matched] == b)
            {
                keep++;
                if (o.Length > matched + 1) longer = true;
            }
        if (keep == 0) return CanEnd ? Move.PopRetry : Move.Reject;
        if (!longer) return Move.Pop;
        var left = new byte[keep][];
        int k = 0;
        foreach (var o in options)
            if (o.Length > matched && o[matched] == b) left[k++] = o;
        return Move.To(new LiteralFrame(left, matched + 1));
    }
}
