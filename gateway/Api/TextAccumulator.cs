using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>
/// Turns generated token ids into text incrementally and watches for stop strings: once one appears, the text is cut
/// before it and <see cref="Stopped"/> is set. Per token the cost is the token's own text: the tokenizer's
/// <see cref="GridTokenizer.IncrementalDecoder"/> decodes only the new token (holding back an incomplete UTF-8
/// character), and each stop string is followed by a Knuth-Morris-Pratt matcher whose state is the longest tail of the
/// text that could still become that stop string: that tail is held back from the output until it is decided.
/// </summary>
public sealed class TextAccumulator
{
    readonly GridTokenizer.IncrementalDecoder _decoder;
    readonly StopMatcher[] _stops;
    readonly System.Text.StringBuilder _emitted = new();
    /// <summary>Decoded text not yet emitted: at most a stop string's length of held-back tail plus the newest token.</summary>
    string _pending = "";

    public TextAccumulator(GridTokenizer tokenizer, IReadOnlyList<string> stops)
    {
        _decoder = tokenizer.NewDecoder();
        _stops = stops.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).Select(s => new StopMatcher(s)).ToArray();
    }

    public bool Stopped { get; private set; }
    public string Text => _emitted.ToString();

    /// <summary>Adds a token; returns the newly final text (may be empty).</summary>
    public string Add(int id) => Add(id, honourStops: true);

    /// <summary>Adds a token; returns the newly final text (may be empty). Without <paramref name="honourStops"/> (before
    /// min_tokens) a stop string that ends in this token's text does not stop the sequence.</summary>
    public string Add(int id, bool honourStops)
    {
        if (Stopped) return "";
        var added = _decoder.Add(id);
        if (added.Length == 0) return "";
        int baseAt = _pending.Length;
        _pending += added;
        // The earliest stop string that ends in the new text (a stop cannot start in text already emitted: that text
        // was never a possible stop prefix).
        int cut = -1;
        foreach (var stop in _stops)
        {
            int end = stop.Feed(added);
            if (end < 0) continue;
            int start = baseAt + end + 1 - stop.Length;
            if (cut < 0 || start < cut) cut = start;
        }
        if (cut >= 0 && honourStops)
        {
            Stopped = true;
            return Emit(Math.Max(0, cut));
        }
        int hold = 0;
        foreach (var stop in _stops) hold = Math.Max(hold, stop.State);
        return Emit(Math.Max(0, _pending.Length - hold));
    }

    /// <summary>At the end of the sequence: whatever was held back (unless a stop string cut it).</summary>
    public string Flush()
    {
        if (Stopped) return "";
        _pending += _decoder.Flush();
        return Emit(_pending.Length);
    }

    /// <summary>Emits the first <paramref name="count"/> pending characters.</summary>
    string Emit(int count)
    {
        if (count == 0) return "";
        var delta = _pending[..count];
        _pending = Stopped ? "" : _pending[count..];
        _emitted.Append(delta);
        return delta;
    }

    /// <summary>Knuth-Morris-Pratt over a stream: <see cref="State"/> is the longest tail of the text so far that is a proper prefix of the stop string.</summary>
    sealed class StopMatcher
    {
        readonly string _stop;
        readonly int[] _failure;

        public StopMatcher(string stop)
        {
            _stop = stop;
            _failure = new int[stop.Length];
            for (int i = 1, k = 0; i < stop.Length; i++)
            {
                while (k > 0 && stop[i] != stop[k]) k = _failure[k - 1];
                if (stop[i] == stop[k]) k++;
                _failure[i] = k;
            }
        }

        public int Length => _stop.Length;
        public int State { get; private set; }

        /// <summary>Feeds text; returns the index in <paramref name="text"/> where the first full match ends, or -1.</summary>
        public int Feed(string text)
        {
            int k = State;
            for (int i = 0; i < text.Length; i++)
            {
                while (k > 0 && text[i] != _stop[k]) k = _failure[k - 1];
                if (text[i] == _stop[k]) k++;
                if (k == _stop.Length)
                {
                    State = 0;
                    return i;
                }
            }
            State = k;
            return -1;
        }
    }
}
