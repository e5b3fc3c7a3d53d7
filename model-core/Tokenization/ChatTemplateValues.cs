using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.ModelCore.Tokenization.Jinja;

// Runtime value model (Python semantics):
//   None -> null, bool, int -> long, float -> double, str -> string, list -> List<object?>,
//   tuple -> object?[], dict -> PyDict, plus Undefined, Namespace, LoopContext and Callable.

/// <summary>A rendering error without a position; the renderer attaches the position of the failing node.</summary>
internal sealed class TemplateRuntimeError(string message) : Exception(message);

/// <summary>Jinja's default <c>Undefined</c>: falsy, renders as "", iterates as empty, fails on most other uses.</summary>
internal sealed class Undefined(string hint)
{
    public string Hint { get; } = hint;

    public TemplateRuntimeError Error() => new(Hint);

    public override string ToString() => string.Empty;
}

/// <summary>Object created by <c>namespace()</c>; its attributes can be assigned with <c>{% set ns.x = ... %}</c>.</summary>
internal sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A Python dict (insertion ordered) with Python key equality (1 == 1.0 == True).</summary>
internal sealed class PyDict() : Dictionary<object, object?>(PyKeyComparer.Instance)
{
    public object? GetOrUndefined(object? key)
    {
        if (key is not null && key is not Undefined && TryGetValue(key, out var value))
        {
            return value;
        }

        return new Undefined($"'dict object' has no attribute {PyOps.Repr(key)}");
    }
}

internal sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();

    public new bool Equals(object? x, object? y) => PyOps.PyEquals(x, y);

    public int GetHashCode(object obj) => obj switch
    {
        string s => StringComparer.Ordinal.GetHashCode(s),
        bool b => (b ? 1L : 0L).GetHashCode(),
        long l => l.GetHashCode(),
        double d when Math.Floor(d) == d && Math.Abs(d) < 9.2e18 => ((long)d).GetHashCode(),
        double d => d.GetHashCode(),
        object?[] tuple => tuple.Aggregate(17, (h, item) => (h * 31) + (item is null ? 0 : GetHashCode(item))),
        _ => obj.GetHashCode(),
    };
}

/// <summary>A built-in function or bound method value (e.g. <c>namespace</c>, <c>loop.cycle</c>).</summary>
internal sealed class Callable(string name, Func<CallArgs, object?> invoke)
{
    public string Name { get; } = name;

    public object? Invoke(CallArgs args) => invoke(args);
}

/// <summary>Evaluated call arguments.</summary>
internal sealed class CallArgs(IReadOnlyList<object?> positional, IReadOnlyDictionary<string, object?> named)
{
    public static readonly CallArgs Empty = new([], new Dictionary<string, object?>());

    public IReadOnlyList<object?> Positional { get; } = positional;

    public IReadOnlyDictionary<string, object?> Named { get; } = named;

    public bool Has(int index, string name) => index < Positional.Count || Named.ContainsKey(name);

    public object? Get(int index, string name, object? fallback = null) =>
        index < Positional.Count ? Positional[index] : Named.TryGetValue(name, out var value) ? value : fallback;

    public CallArgs Skip(int count) => new(Positional.Skip(count).ToList(), Named);
}

/// <summary>The <c>loop</c> variable of a for loop.</summary>
internal sealed class LoopContext(IReadOnlyList<object?> items, int depth)
{
    public int Index0 { get; set; }

    public object? Get(string name) => name switch
    {
        "index" => (long)(Index0 + 1),
        "index0" => (long)Index0,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => (long)depth,
        "depth0" => (long)(depth - 1),
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 < items.Count - 1 ? items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new Callable("cycle", args =>
            args.Positional.Count == 0
                ? throw new TemplateRuntimeError("no items for cycling given")
                : args.Positional[Index0 % args.Positional.Count]),
        _ => new Undefined($"'LoopContext' object has no attribute '{name}'"),
    };
}

/// <summary>Conversion of CLR values into the runtime value model.</summary>
internal static class PyValues
{
    public static object? FromClr(object? value) => value switch
    {
        null => null,
        string or bool or long or double or Undefined or Namespace or Callable or PyDict => value,
        int or short or byte or sbyte or ushort or uint => Convert.ToInt64(value, CultureInfo.InvariantCulture),
        ulong u => u <= long.MaxValue ? (object)(long)u : (double)u,
        float f => (double)f,
        decimal m => (double)m,
        char c => c.ToString(),
        ChatMessage m => new PyDict { ["role"] = m.Role, ["content"] = m.Content },
        JsonElement e => FromJson(e),
        JsonNode n => FromJson(JsonSerializer.SerializeToElement(n)),
        IDictionary d => FromDictionary(d),
        IEnumerable<KeyValuePair<string, object?>> pairs => FromPairs(pairs),
        IEnumerable items => items.Cast<object?>().Select(FromClr).ToList(),
        Delegate => throw new ArgumentException("Delegates cannot be passed to a chat template."),
        _ => value.ToString(),
    };

    private static PyDict FromDictionary(IDictionary dictionary)
    {
        var result = new PyDict();
        foreach (DictionaryEntry entry in dictionary)
        {
            result[FromClr(entry.Key) ?? throw new ArgumentException("Dictionary keys passed to a chat template cannot be null.")] = FromClr(entry.Value);
        }

        return result;
    }

    private static PyDict FromPairs(IEnumerable<KeyValuePair<string, object?>> pairs)
    {
        var result = new PyDict();
        foreach (var (key, value) in pairs)
        {
            result[key] = FromClr(value);
        }

        return result;
    }

    private static object? FromJson(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.Object => element.EnumerateObject().Aggregate(new PyDict(), (d, p) =>
        {
            d[p.Name] = FromJson(p.Value);
            return d;
        }),
        JsonValueKind.Array => element.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => element.GetString(),
        JsonValueKind.Number => element.TryGetInt64(out long l) ? (object)l : element.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };
}

/// <summary>Python/Jinja semantics for truthiness, str(), repr(), equality, ordering and arithmetic.</summary>
internal static class PyOps
{
    public static string TypeName(object? value) => value switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        object?[] => "tuple",
        PyDict => "dict",
        Undefined => "Undefined",
        Namespace => "Namespace",
        LoopContext => "LoopContext",
        Callable => "builtin_function_or_method",
        _ => value.GetType().Name,
    };

    public static bool Truthy(object? value) => value switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        ICollection c => c.Count > 0,
        _ => true,
    };

    public static bool IsNumber(object? value) => value is bool or long or double;

    /// <summary>Python <c>str(value)</c>; Undefined renders as "".</summary>
    public static string Str(object? value) => value switch
    {
        string s => s,
        Undefined => string.Empty,
        _ => Repr(value),
    };

    public static string Repr(object? value) => value switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FormatFloat(d),
        string s => ReprString(s),
        List<object?> list => "[" + string.Join(", ", list.Select(Repr)) + "]",
        object?[] tuple => tuple.Length == 1 ? $"({Repr(tuple[0])},)" : "(" + string.Join(", ", tuple.Select(Repr)) + ")",
        PyDict dict => "{" + string.Join(", ", dict.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        Undefined => string.Empty,
        Namespace ns => "<Namespace {" + string.Join(", ", ns.Attributes.Select(kv => ReprString(kv.Key) + ": " + Repr(kv.Value))) + "}>",
        LoopContext loop => $"<LoopContext {loop.Index0 + 1}/{loop.Get("length")}>",
        Callable c => $"<built-in function {c.Name}>",
        _ => value.ToString() ?? string.Empty,
    };

    /// <summary>Python <c>repr(float)</c>: shortest round-trip digits, exponent form outside [1e-4, 1e16).</summary>
    public static string FormatFloat(double d)
    {
        if (double.IsNaN(d))
        {
            return "nan";
        }

        if (double.IsInfinity(d))
        {
            return d > 0 ? "inf" : "-inf";
        }

        if (d == 0)
        {
            return double.IsNegative(d) ? "-0.0" : "0.0";
        }

        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int ePos = r.IndexOfAny(['E', 'e']);
        int exponent = ePos >= 0 ? int.Parse(r.AsSpan(ePos + 1), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture) : 0;
        string mantissa = ePos >= 0 ? r[..ePos] : r;
        int dot = mantissa.IndexOf('.');
        string digits = dot >= 0 ? mantissa.Remove(dot, 1) : mantissa;
        int decpt = (dot >= 0 ? dot : mantissa.Length) + exponent; // value = 0.digits * 10^decpt
        int leading = digits.Length - digits.TrimStart('0').Length;
        digits = digits.Trim('0');
        decpt -= leading;

        var sb = new StringBuilder(d < 0 ? "-" : string.Empty);
        int sciExponent = decpt - 1;
        if (sciExponent < -4 || sciExponent >= 16)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1)
            {
                sb.Append('.').Append(digits, 1, digits.Length - 1);
            }

            sb.Append('e').Append(sciExponent < 0 ? '-' : '+').Append(Math.Abs(sciExponent).ToString("00", CultureInfo.InvariantCulture));
        }
        else if (decpt <= 0)
        {
            sb.Append("0.").Append('0', -decpt).Append(digits);
        }
        else if (decpt >= digits.Length)
        {
            sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
        }
        else
        {
            sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        }

        return sb.ToString();
    }

    private static string ReprString(string s)
    {
        char quote = s.Contains('\'', StringComparison.Ordinal) && !s.Contains('"', StringComparison.Ordinal) ? '"' : '\'';
        var sb = new StringBuilder(s.Length + 2).Append(quote);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == quote)
                    {
                        sb.Append('\\').Append(c);
                    }
                    else if (c < 0x20 || c == 0x7f)
                    {
                        sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }

                    break;
            }
        }

        return sb.Append(quote).ToString();
    }

    public static bool PyEquals(object? a, object? b)
    {
        if (a is Undefined || b is Undefined)
        {
            return a is Undefined && b is Undefined;
        }

        if (IsNumber(a) && IsNumber(b))
        {
            return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLong(a) == ToLong(b);
        }

        return (a, b) switch
        {
            (null, null) => true,
            (string x, string y) => string.Equals(x, y, StringComparison.Ordinal),
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => PyEquals(p.First, p.Second)),
            (object?[] x, object?[] y) => x.Length == y.Length && x.Zip(y).All(p => PyEquals(p.First, p.Second)),
            (PyDict x, PyDict y) => x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var v) && PyEquals(kv.Value, v)),
            _ => ReferenceEquals(a, b),
        };
    }

    /// <summary>Python ordering (&lt;, &gt;, ...): numbers, strings (by code point) and sequences.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (a is Undefined ua)
        {
            throw ua.Error();
        }

        if (b is Undefined ub)
        {
            throw ub.Error();
        }

        if (IsNumber(a) && IsNumber(b))
        {
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        }

        switch (a, b)
        {
            case (string x, string y):
                return string.CompareOrdinal(x, y);
            case (List<object?> x, List<object?> y):
                return CompareSequences(x, y, op);
            case (object?[] x, object?[] y):
                return CompareSequences(x, y, op);
            default:
                throw new TemplateRuntimeError($"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
        }
    }

    private static int CompareSequences(IList<object?> x, IList<object?> y, string op)
    {
        for (int i = 0; i < Math.Min(x.Count, y.Count); i++)
        {
            if (!PyEquals(x[i], y[i]))
            {
                return Compare(x[i], y[i], op);
            }
        }

        return x.Count.CompareTo(y.Count);
    }

    public static bool Contains(object? container, object? item)
    {
        switch (container)
        {
            case Undefined:
                return false; // Undefined iterates as empty
            case string s:
                return item is string needle
                    ? s.Contains(needle, StringComparison.Ordinal)
                    : throw new TemplateRuntimeError($"'in <string>' requires string as left operand, not {TypeName(item)}");
            case PyDict d:
                return item is not null && item is not Undefined && d.ContainsKey(item);
            case IList<object?> list:
                return list.Any(x => PyEquals(x, item));
            default:
                throw new TemplateRuntimeError($"argument of type '{TypeName(container)}' is not iterable");
        }
    }

    public static long ToLong(object? value) => value switch
    {
        bool b => b ? 1 : 0,
        long l => l,
        double d => (long)d,
        _ => throw new TemplateRuntimeError($"expected an integer, got '{TypeName(value)}'"),
    };

    public static double ToDouble(object? value) => value switch
    {
        bool b => b ? 1 : 0,
        long l => l,
        double d => d,
        _ => throw new TemplateRuntimeError($"expected a number, got '{TypeName(value)}'"),
    };

    public static object? Binary(string op, object? a, object? b)
    {
        if (op == "~")
        {
            return Str(a) + Str(b);
        }

        if (a is Undefined ua)
        {
            throw ua.Error();
        }

        if (b is Undefined ub)
        {
            throw ub.Error();
        }

        if (IsNumber(a) && IsNumber(b))
        {
            return Arithmetic(op, a, b);
        }

        switch (op, a, b)
        {
            case ("+", string x, string y):
                return x + y;
            case ("+", List<object?> x, List<object?> y):
                return x.Concat(y).ToList();
            case ("+", object?[] x, object?[] y):
                return x.Concat(y).ToArray();
            case ("*", _, _) when IsIntLike(b) && IsSequence(a):
                return Repeat(a, ToLong(b));
            case ("*", _, _) when IsIntLike(a) && IsSequence(b):
                return Repeat(b, ToLong(a));
            default:
                string symbol = op == "%" && a is string ? "% (string formatting)" : op;
                throw new TemplateRuntimeError($"unsupported operand type(s) for {symbol}: '{TypeName(a)}' and '{TypeName(b)}'");
        }
    }

    private static bool IsIntLike(object? value) => value is long or bool;

    private static bool IsSequence(object? value) => value is string || value is IList<object?>;

    private static object Repeat(object? sequence, long count)
    {
        int n = (int)Math.Clamp(count, 0, 1_000_000);
        return sequence switch
        {
            string s => string.Concat(Enumerable.Repeat(s, n)),
            List<object?> list => Enumerable.Repeat(list, n).SelectMany(x => x).ToList(),
            object?[] tuple => Enumerable.Repeat(tuple, n).SelectMany(x => x).ToArray(),
            _ => throw new InvalidOperationException(),
        };
    }

    private static object Arithmetic(string op, object? a, object? b)
    {
        bool integral = a is not double && b is not double;
        if (integral)
        {
            long x = ToLong(a);
            long y = ToLong(b);
            switch (op)
            {
                case "+": return x + y;
                case "-": return x - y;
                case "*": return x * y;
                case "/": return y == 0 ? throw DivisionByZero() : (double)x / y;
                case "//": return y == 0 ? throw DivisionByZero() : FloorDiv(x, y);
                case "%": return y == 0 ? throw DivisionByZero() : x - (y * FloorDiv(x, y));
                case "**" when y >= 0:
                    long result = 1;
                    for (long i = 0; i < y; i++)
                    {
                        result *= x;
                    }

                    return result;
            }
        }

        double p = ToDouble(a);
        double q = ToDouble(b);
        return op switch
        {
            "+" => p + q,
            "-" => p - q,
            "*" => p * q,
            "/" => q == 0 ? throw DivisionByZero() : p / q,
            "//" => q == 0 ? throw DivisionByZero() : Math.Floor(p / q),
            "%" => q == 0 ? throw DivisionByZero() : p - (q * Math.Floor(p / q)),
            "**" => Math.Pow(p, q),
            _ => throw new TemplateRuntimeError($"unknown operator '{op}'"),
        };
    }

    private static long FloorDiv(long x, long y)
    {
        long quotient = x / y;
        return (x % y != 0) && ((x < 0) != (y < 0)) ? quotient - 1 : quotient;
    }

    private static TemplateRuntimeError DivisionByZero() => new("division by zero");

    /// <summary>Python iteration: lists/tuples by item, dicts by key, strings by code point; Undefined is empty.</summary>
    public static IReadOnlyList<object?> Iterate(object? value) => value switch
    {
        Undefined => [],
        List<object?> list => list,
        object?[] tuple => tuple,
        PyDict dict => dict.Keys.ToList<object?>(),
        string s => PyText.CodePoints(s).ToList<object?>(),
        _ => throw new TemplateRuntimeError($"'{TypeName(value)}' object is not iterable"),
    };
}

/// <summary>Python str helpers (whitespace definition, code point indexing).</summary>
internal static class PyText
{
    public static bool IsWhitespace(char c) => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f';

    public static bool IsAllWhitespace(string text, int start)
    {
        for (int i = start; i < text.Length; i++)
        {
            if (!IsWhitespace(text[i]))
            {
                return false;
            }
        }

        return true;
    }

    public static string Strip(string s, string? chars = null) => RStrip(LStrip(s, chars), chars);

    public static string LStrip(string s, string? chars = null)
    {
        int i = 0;
        while (i < s.Length && (chars is null ? IsWhitespace(s[i]) : chars.Contains(s[i], StringComparison.Ordinal)))
        {
            i++;
        }

        return s[i..];
    }

    public static string RStrip(string s, string? chars = null)
    {
        int end = s.Length;
        while (end > 0 && (chars is null ? IsWhitespace(s[end - 1]) : chars.Contains(s[end - 1], StringComparison.Ordinal)))
        {
            end--;
        }

        return s[..end];
    }

    /// <summary>The string split into code points (what Python indexes and iterates).</summary>
    public static string[] CodePoints(string s)
    {
        var result = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            bool pair = char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]);
            result.Add(pair ? s.Substring(i++, 2) : s[i].ToString());
        }

        return [.. result];
    }

    public static int Length(string s)
    {
        int count = s.Length;
        for (int i = 0; i + 1 < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && char.IsLowSurrogate(s[i + 1]))
            {
                count--;
                i++;
            }
        }

        return count;
    }

    public static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (char c in s)
        {
            sb.Append(previousCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousCased = char.IsLetter(c);
        }

        return sb.ToString();
    }

    public static List<object?> Split(string s, string? separator, long maxSplit)
    {
        var parts = new List<object?>();
        if (separator is null)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && IsWhitespace(s[i]))
                {
                    i++;
                }

                if (i >= s.Length)
                {
                    break;
                }

                if (maxSplit >= 0 && parts.Count >= maxSplit)
                {
                    parts.Add(RStrip(s[i..]));
                    break;
                }

                int start = i;
                while (i < s.Length && !IsWhitespace(s[i]))
                {
                    i++;
                }

                parts.Add(s[start..i]);
            }

            return parts;
        }

        if (separator.Length == 0)
        {
            throw new TemplateRuntimeError("empty separator");
        }

        int from = 0;
        while (maxSplit < 0 || parts.Count < maxSplit)
        {
            int at = s.IndexOf(separator, from, StringComparison.Ordinal);
            if (at < 0)
            {
                break;
            }

            parts.Add(s[from..at]);
            from = at + separator.Length;
        }

        parts.Add(s[from..]);
        return parts;
    }
}

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
