using Grid.ModelCore.Tokenization;

namespace Grid.Gateway.Api;

/// <summary>
/// Turns generated token ids into text incrementally (holding back incomplete UTF-8 sequences) and watches for
/// stop strings: once one appears, the text is cut before it and <see cref="Stopped"/> is set.
/// </summary>
public sealed class TextAccumulator(GridTokenizer tokenizer, IReadOnlyList<string> stops)
{
    readonly List<int> _ids = new();
    string _emitted = "";

    public bool Stopped { get; private set; }
    public string Text => _emitted;

    /// <summary>Adds a token; returns the newly final text (may be empty).</summary>
    public string Add(int id)
    {
        if (Stopped) return "";
        _ids.Add(id);
        var full = tokenizer.Decode(_ids);
        if (full.EndsWith('\uFFFD')) return "";   // wait for the rest of a multi-byte character
        foreach (var stop in stops)
        {
            if (stop.Length == 0) continue;
            int at = full.IndexOf(stop, Math.Max(0, _emitted.Length - stop.Length + 1), StringComparison.Ordinal);
            if (at >= 0)
            {
                Stopped = true;
                full = full[..at];
                break;
            }
        }
        // Hold back a tail that could still become a stop string.
        int hold = 0;
        if (!Stopped)
            foreach (var stop in stops)
                for (int k = Math.Min(stop.Length - 1, full.Length); k > hold; k--)
                    if (full.EndsWith(stop[..k], StringComparison.Ordinal)) { hold = k; break; }
        var final = full[..(full.Length - hold)];
        if (final.Length < _emitted.Length || !final.StartsWith(_emitted, StringComparison.Ordinal)) return "";
        var delta = final[_emitted.Length..];
        _emitted = final;
        return delta;
    }

    /// <summary>At the end of the sequence: whatever was held back (unless a stop string cut it).</summary>
    public string Flush()
    {
        if (Stopped) return "";
        var full = tokenizer.Decode(_ids);
        if (!full.StartsWith(_emitted, StringComparison.Ordinal)) return "";
        var delta = full[_emitted.Length..];
        _emitted = full;
        return delta;
    }
}
