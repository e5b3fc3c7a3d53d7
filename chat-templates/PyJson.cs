using System.Globalization;
using System.Text;

namespace Grid.ChatTemplates;

/// <summary>JSON output matching transformers' <c>tojson</c> (Python <c>json.dumps(..., ensure_ascii=False)</c>).</summary>
internal static class PyJson
{
    public static string Dumps(object? value, string? indent, string itemSeparator, string keySeparator, bool sortKeys, bool ensureAscii)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, itemSeparator, keySeparator, sortKeys, ensureAscii, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? value, string? indent, string itemSep, string keySep, bool sortKeys, bool ensureAscii, int level)
    {
        switch (value)
        {
            case null:
                sb.Append("null");
                break;
            case bool b:
                sb.Append(b ? "true" : "false");
                break;
            case long l:
                sb.Append(l.ToString(CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : PyOps.FormatFloat(d));
                break;
            case string s:
                WriteString(sb, s, ensureAscii);
                break;
            case IList<object?> list:
                WriteContainer(sb, '[', ']', list.Count, indent, itemSep, level, i =>
                    Write(sb, list[i], indent, itemSep, keySep, sortKeys, ensureAscii, level + 1));
                break;
            case PyDict dict:
                var entries = dict.ToList();
                if (sortKeys)
                {
                    entries.Sort((x, y) => PyOps.Compare(x.Key, y.Key, "<"));
                }

                WriteContainer(sb, '{', '}', entries.Count, indent, itemSep, level, i =>
                {
                    WriteString(sb, KeyString(entries[i].Key), ensureAscii);
                    sb.Append(keySep);
                    Write(sb, entries[i].Value, indent, itemSep, keySep, sortKeys, ensureAscii, level + 1);
                });
                break;
            default:
                throw new TemplateRuntimeError($"Object of type {PyOps.TypeName(value)} is not JSON serializable");
        }
    }

    private static string KeyString(object key) => key switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        long or double => PyOps.Repr(key),
        _ => throw new TemplateRuntimeError($"keys must be str, int, float, bool or None, not {PyOps.TypeName(key)}"),
    };

    private static void WriteContainer(StringBuilder sb, char open, char close, int count, string? indent, string itemSep, int level, Action<int> writeItem)
    {
        sb.Append(open);
        if (count == 0)
        {
            sb.Append(close);
            return;
        }

        for (int i = 0; i < count; i++)
        {
            if (i > 0)
            {
                sb.Append(itemSep);
            }

            if (indent is not null)
            {
                sb.Append('\n').Append(string.Concat(Enumerable.Repeat(indent, level + 1)));
            }

            writeItem(i);
        }

        if (indent is not null)
        {
            sb.Append('\n').Append(string.Concat(Enumerable.Repeat(indent, level)));
        }

        sb.Append(close);
    }

    private static void WriteString(StringBuilder sb, string s, bool ensureAscii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ensureAscii && c > 0x7e))
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }

                    break;
            }
        }

        sb.Append('"');
    }
}
