using System.Globalization;
using System.Net;
using System.Text;

namespace Grid.ChatTemplates;

/// <summary>Filters, tests, global functions and str/dict methods available to templates.</summary>
internal static class ChatTemplateBuiltins
{
    private static readonly Dictionary<string, Func<object?, CallArgs, object?>> Filters = new(StringComparer.Ordinal)
    {
        ["trim"] = (v, a) => PyText.Strip(PyOps.Str(v), OptionalString(a.Get(0, "chars"))),
        ["length"] = (v, _) => Length(v),
        ["count"] = (v, _) => Length(v),
        ["upper"] = (v, _) => PyOps.Str(v).ToUpperInvariant(),
        ["lower"] = (v, _) => PyOps.Str(v).ToLowerInvariant(),
        ["capitalize"] = (v, _) => PyText.Capitalize(PyOps.Str(v)),
        ["title"] = (v, _) => PyText.Title(PyOps.Str(v)),
        ["string"] = (v, _) => PyOps.Str(v),
        ["safe"] = (v, _) => v,
        ["escape"] = (v, _) => WebUtility.HtmlEncode(PyOps.Str(v)),
        ["e"] = (v, _) => WebUtility.HtmlEncode(PyOps.Str(v)),
        ["tojson"] = ToJson,
        ["default"] = Default,
        ["d"] = Default,
        ["first"] = (v, _) => PyOps.Iterate(v) is { Count: > 0 } items ? items[0] : new Undefined("No first item, sequence was empty."),
        ["last"] = (v, _) => PyOps.Iterate(v) is { Count: > 0 } items ? items[^1] : new Undefined("No last item, sequence was empty."),
        ["list"] = (v, _) => PyOps.Iterate(v).ToList(),
        ["reverse"] = (v, _) => v is string s ? string.Concat(PyText.CodePoints(s).Reverse()) : PyOps.Iterate(v).Reverse().ToList(),
        ["join"] = (v, a) => string.Join(PyOps.Str(a.Get(0, "d", string.Empty)), MaybeAttribute(PyOps.Iterate(v), a.Get(1, "attribute")).Select(PyOps.Str)),
        ["replace"] = (v, a) => Replace(PyOps.Str(v), PyOps.Str(a.Get(0, "old")), PyOps.Str(a.Get(1, "new")), a.Get(2, "count")),
        ["int"] = (v, a) => ToInt(v, a.Get(0, "default", 0L)),
        ["float"] = (v, a) => ToFloat(v, a.Get(0, "default", 0.0)),
        ["abs"] = (v, _) => v switch { long l => (object)Math.Abs(l), double d => Math.Abs(d), bool b => b ? 1L : 0L, _ => throw new TemplateRuntimeError($"bad operand type for abs(): '{PyOps.TypeName(v)}'") },
        ["round"] = Round,
        ["items"] = (v, _) => v switch { Undefined => new List<object?>(), PyDict d => Items(d), _ => throw new TemplateRuntimeError("Can only get item pairs from a mapping.") },
        ["map"] = Map,
        ["select"] = (v, a) => Select(v, a, attribute: false, keep: true),
        ["reject"] = (v, a) => Select(v, a, attribute: false, keep: false),
        ["selectattr"] = (v, a) => Select(v, a, attribute: true, keep: true),
        ["rejectattr"] = (v, a) => Select(v, a, attribute: true, keep: false),
    };

    private static readonly Dictionary<string, Func<object?, CallArgs, bool>> Tests = new(StringComparer.Ordinal)
    {
        ["defined"] = (v, _) => v is not Undefined,
        ["undefined"] = (v, _) => v is Undefined,
        ["none"] = (v, _) => v is null,
        ["string"] = (v, _) => v is string,
        ["number"] = (v, _) => PyOps.IsNumber(v),
        ["integer"] = (v, _) => v is long,
        ["float"] = (v, _) => v is double,
        ["boolean"] = (v, _) => v is bool,
        ["true"] = (v, _) => v is true,
        ["false"] = (v, _) => v is false,
        ["mapping"] = (v, _) => v is PyDict,
        ["sequence"] = (v, _) => v is string or IList<object?> or PyDict,
        ["iterable"] = (v, _) => v is string or IList<object?> or PyDict or Undefined,
        ["callable"] = (v, _) => v is Callable,
        ["even"] = (v, _) => PyOps.ToLong(v) % 2 == 0,
        ["odd"] = (v, _) => PyOps.ToLong(v) % 2 != 0,
        ["divisibleby"] = (v, a) => PyOps.ToLong(v) % PyOps.ToLong(a.Get(0, "num")) == 0,
        ["lower"] = (v, _) => v is string s && s == s.ToLowerInvariant(),
        ["upper"] = (v, _) => v is string s && s == s.ToUpperInvariant(),
        ["eq"] = (v, a) => PyOps.PyEquals(v, a.Get(0, "other")),
        ["equalto"] = (v, a) => PyOps.PyEquals(v, a.Get(0, "other")),
        ["=="] = (v, a) => PyOps.PyEquals(v, a.Get(0, "other")),
        ["ne"] = (v, a) => !PyOps.PyEquals(v, a.Get(0, "other")),
        ["!="] = (v, a) => !PyOps.PyEquals(v, a.Get(0, "other")),
        ["lt"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), "<") < 0,
        ["lessthan"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), "<") < 0,
        ["le"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), "<=") <= 0,
        ["gt"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), ">") > 0,
        ["greaterthan"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), ">") > 0,
        ["ge"] = (v, a) => PyOps.Compare(v, a.Get(0, "other"), ">=") >= 0,
        ["in"] = (v, a) => PyOps.Contains(a.Get(0, "seq"), v),
        ["sameas"] = (v, a) => SameAs(v, a.Get(0, "other")),
    };

    private static readonly Dictionary<string, Callable> Globals = new Callable[]
    {
        new("raise_exception", a => throw new ChatTemplateException(PyOps.Str(a.Get(0, "message")))),
        new("namespace", NewNamespace),
        new("range", Range),
        new("dict", a => a.Named.Aggregate(new PyDict(), (d, kv) =>
        {
            d[kv.Key] = kv.Value;
            return d;
        })),
        new("strftime_now", a => StrFTime(DateTime.Now, PyOps.Str(a.Get(0, "format")))),
    }.ToDictionary(c => c.Name, StringComparer.Ordinal);

    public static bool HasFilter(string name) => Filters.ContainsKey(name);

    public static bool HasTest(string name) => Tests.ContainsKey(name);

    public static bool TryGetGlobal(string name, out Callable function) => Globals.TryGetValue(name, out function!);

    public static object? ApplyFilter(string name, object? value, CallArgs args) => Filters[name](value, args);

    public static bool ApplyTest(string name, object? value, CallArgs args) => Tests[name](value, args);

    /// <summary>Calls a Python str/dict method; returns false when <paramref name="target"/> has no such method.</summary>
    public static bool TryCallMethod(object? target, string name, CallArgs a, out object? result)
    {
        result = (target, name) switch
        {
            (string s, "strip") => PyText.Strip(s, OptionalString(a.Get(0, "chars"))),
            (string s, "lstrip") => PyText.LStrip(s, OptionalString(a.Get(0, "chars"))),
            (string s, "rstrip") => PyText.RStrip(s, OptionalString(a.Get(0, "chars"))),
            (string s, "upper") => s.ToUpperInvariant(),
            (string s, "lower") => s.ToLowerInvariant(),
            (string s, "title") => PyText.Title(s),
            (string s, "capitalize") => PyText.Capitalize(s),
            (string s, "startswith") => Affix(a.Get(0, "prefix")).Any(p => s.StartsWith(p, StringComparison.Ordinal)),
            (string s, "endswith") => Affix(a.Get(0, "suffix")).Any(p => s.EndsWith(p, StringComparison.Ordinal)),
            (string s, "split") => PyText.Split(s, OptionalString(a.Get(0, "sep")), PyOps.ToLong(a.Get(1, "maxsplit", -1L))),
            (string s, "replace") => Replace(s, RequireString(a.Get(0, "old")), RequireString(a.Get(1, "new")), a.Get(2, "count")),
            (string s, "find") => (long)s.IndexOf(RequireString(a.Get(0, "sub")), StringComparison.Ordinal),
            (string s, "count") => CountOccurrences(s, RequireString(a.Get(0, "sub"))),
            (string s, "join") => string.Join(s, PyOps.Iterate(a.Get(0, "iterable")).Select(RequireString)),
            (string s, "isdigit") => s.Length > 0 && s.All(char.IsDigit),
            (string s, "isspace") => s.Length > 0 && s.All(PyText.IsWhitespace),
            (PyDict d, "items") => Items(d),
            (PyDict d, "keys") => d.Keys.ToList<object?>(),
            (PyDict d, "values") => d.Values.ToList(),
            (PyDict d, "get") => a.Get(0, "key") is { } key and not Undefined && d.TryGetValue(key, out var v) ? v : a.Get(1, "default"),
            _ => Missing.Value,
        };
        return result is not Missing;
    }

    private sealed class Missing
    {
        public static readonly Missing Value = new();
    }

    private static object Length(object? value) => value switch
    {
        string s => (long)PyText.Length(s),
        Undefined => 0L,
        System.Collections.ICollection c => (long)c.Count,
        _ => throw new TemplateRuntimeError($"object of type '{PyOps.TypeName(value)}' has no len()"),
    };

    private static object? Default(object? value, CallArgs a)
    {
        bool boolean = PyOps.Truthy(a.Get(1, "boolean", false));
        bool useDefault = value is Undefined || (boolean && !PyOps.Truthy(value));
        return useDefault ? a.Get(0, "default_value", string.Empty) : value;
    }

    private static object? ToJson(object? value, CallArgs a)
    {
        object? indentArg = a.Get(1, "indent");
        string? indent = indentArg switch
        {
            null => null,
            long n => new string(' ', (int)Math.Max(0, n)),
            string s => s,
            _ => throw new TemplateRuntimeError("tojson indent must be an int or a string"),
        };
        string itemSeparator = indent is null ? ", " : ",";
        string keySeparator = ": ";
        if (a.Get(2, "separators") is IList<object?> { Count: 2 } separators)
        {
            itemSeparator = RequireString(separators[0]);
            keySeparator = RequireString(separators[1]);
        }

        bool ensureAscii = PyOps.Truthy(a.Get(0, "ensure_ascii", false));
        bool sortKeys = PyOps.Truthy(a.Get(3, "sort_keys", false));
        if (value is Undefined u)
        {
            throw u.Error();
        }

        return PyJson.Dumps(value, indent, itemSeparator, keySeparator, sortKeys, ensureAscii);
    }

    private static object Round(object? value, CallArgs a)
    {
        double x = PyOps.ToDouble(value);
        int digits = (int)PyOps.ToLong(a.Get(0, "precision", 0L));
        double scale = Math.Pow(10, digits);
        return PyOps.Str(a.Get(1, "method", "common")) switch
        {
            "common" => Math.Round(x, Math.Clamp(digits, 0, 15), MidpointRounding.ToEven), // Python's round()
            "floor" => Math.Floor(x * scale) / scale,
            "ceil" => Math.Ceiling(x * scale) / scale,
            _ => throw new TemplateRuntimeError("method must be 'common', 'ceil' or 'floor'"),
        };
    }

    private static object ToInt(object? value, object? fallback)
    {
        switch (value)
        {
            case bool or long:
                return PyOps.ToLong(value);
            case double d when !double.IsNaN(d) && !double.IsInfinity(d):
                return (long)Math.Truncate(d);
            case string s:
                string t = s.Trim().Replace("_", string.Empty, StringComparison.Ordinal);
                if (long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l))
                {
                    return l;
                }

                if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && !double.IsNaN(f) && !double.IsInfinity(f))
                {
                    return (long)Math.Truncate(f);
                }

                break;
        }

        return fallback ?? 0L;
    }

    private static object ToFloat(object? value, object? fallback) => value switch
    {
        bool or long or double => PyOps.ToDouble(value),
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
        _ => fallback ?? 0.0,
    };

    private static string Replace(string s, string old, string replacement, object? count)
    {
        long limit = count is null or Undefined ? -1 : PyOps.ToLong(count);
        if (limit < 0)
        {
            return old.Length == 0
                ? replacement + string.Join(replacement, PyText.CodePoints(s)) + (s.Length > 0 ? replacement : string.Empty)
                : s.Replace(old, replacement, StringComparison.Ordinal);
        }

        var sb = new StringBuilder();
        int from = 0;
        for (long n = 0; n < limit && old.Length > 0; n++)
        {
            int at = s.IndexOf(old, from, StringComparison.Ordinal);
            if (at < 0)
            {
                break;
            }

            sb.Append(s, from, at - from).Append(replacement);
            from = at + old.Length;
        }

        return sb.Append(s, from, s.Length - from).ToString();
    }

    private static long CountOccurrences(string s, string sub)
    {
        if (sub.Length == 0)
        {
            return PyText.Length(s) + 1;
        }

        long count = 0;
        for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal))
        {
            count++;
        }

        return count;
    }

    private static List<object?> Items(PyDict d) => d.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList();

    private static IEnumerable<string> Affix(object? value) => value switch
    {
        string s => [s],
        object?[] tuple => tuple.Select(RequireString),
        _ => throw new TemplateRuntimeError($"startswith/endswith first arg must be str or a tuple of str, not {PyOps.TypeName(value)}"),
    };

    private static string? OptionalString(object? value) => value is null or Undefined ? null : RequireString(value);

    private static string RequireString(object? value) =>
        value as string ?? throw new TemplateRuntimeError($"expected str, got {PyOps.TypeName(value)}");

    private static IEnumerable<object?> MaybeAttribute(IEnumerable<object?> items, object? attribute) =>
        attribute is null or Undefined ? items : items.Select(item => GetAttribute(item, PyOps.Str(attribute)));

    /// <summary>Jinja's attribute lookup for filters: dotted paths, integer parts index sequences.</summary>
    private static object? GetAttribute(object? item, string path)
    {
        foreach (string part in path.Split('.'))
        {
            item = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long index)
                ? ChatTemplateRenderer.GetItem(item, index)
                : ChatTemplateRenderer.GetAttr(item, part);
        }

        return item;
    }

    private static object Map(object? value, CallArgs a)
    {
        var items = PyOps.Iterate(value);
        if (a.Named.TryGetValue("attribute", out var attribute))
        {
            string path = PyOps.Str(attribute);
            bool hasDefault = a.Named.TryGetValue("default", out var fallback);
            return items.Select(item => GetAttribute(item, path) is var v && v is Undefined && hasDefault ? fallback : v).ToList();
        }

        string filter = a.Get(0, "name") as string ?? throw new TemplateRuntimeError("map requires a filter name or attribute=");
        if (!HasFilter(filter))
        {
            throw new TemplateRuntimeError($"No filter named '{filter}'");
        }

        var rest = a.Skip(1);
        return items.Select(item => ApplyFilter(filter, item, rest)).ToList();
    }

    private static object Select(object? value, CallArgs a, bool attribute, bool keep)
    {
        int skip = attribute ? 1 : 0;
        string? attr = attribute ? PyOps.Str(a.Get(0, "attribute")) : null;
        string? test = a.Positional.Count > skip ? a.Positional[skip] as string : null;
        if (test is not null && !HasTest(test))
        {
            throw new TemplateRuntimeError($"No test named '{test}'");
        }

        var rest = new CallArgs(a.Positional.Skip(skip + 1).ToList(), new Dictionary<string, object?>());
        return PyOps.Iterate(value).Where(item =>
        {
            object? subject = attr is null ? item : GetAttribute(item, attr);
            bool passed = test is null ? PyOps.Truthy(subject) : ApplyTest(test, subject, rest);
            return passed == keep;
        }).ToList();
    }

    private static bool SameAs(object? a, object? b) => (a, b) switch
    {
        (null, null) => true,
        (bool x, bool y) => x == y,
        (long x, long y) => x == y && x is >= -5 and <= 256, // CPython small-int cache
        _ => ReferenceEquals(a, b),
    };

    private static object NewNamespace(CallArgs a)
    {
        var ns = new Namespace();
        foreach (object? positional in a.Positional)
        {
            if (positional is not PyDict dict)
            {
                throw new TemplateRuntimeError("namespace() positional argument must be a dict");
            }

            foreach (var (key, value) in dict)
            {
                ns.Attributes[PyOps.Str(key)] = value;
            }
        }

        foreach (var (key, value) in a.Named)
        {
            ns.Attributes[key] = value;
        }

        return ns;
    }

    private static object Range(CallArgs a)
    {
        var numbers = a.Positional.Select(PyOps.ToLong).ToArray();
        var (start, stop, step) = numbers.Length switch
        {
            1 => (0L, numbers[0], 1L),
            2 => (numbers[0], numbers[1], 1L),
            3 => (numbers[0], numbers[1], numbers[2]),
            _ => throw new TemplateRuntimeError($"range expected 1 to 3 arguments, got {numbers.Length}"),
        };
        if (step == 0)
        {
            throw new TemplateRuntimeError("range() arg 3 must not be zero");
        }

        var result = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (result.Count >= 100_000)
            {
                throw new TemplateRuntimeError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            }

            result.Add(i);
        }

        return result;
    }

    /// <summary>A subset of C strftime (the codes chat templates use), with glibc's %-d style flags.</summary>
    private static string StrFTime(DateTime now, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }

            bool noPad = format[i + 1] == '-' && i + 2 < format.Length;
            char code = format[noPad ? i + 2 : i + 1];
            i += noPad ? 2 : 1;
            string pad2 = noPad ? "0" : "00";
            sb.Append(code switch
            {
                'Y' => now.Year.ToString(inv),
                'y' => (now.Year % 100).ToString("00", inv),
                'm' => now.Month.ToString(pad2, inv),
                'd' => now.Day.ToString(pad2, inv),
                'H' => now.Hour.ToString(pad2, inv),
                'I' => ((now.Hour + 11) % 12 + 1).ToString(pad2, inv),
                'M' => now.Minute.ToString(pad2, inv),
                'S' => now.Second.ToString(pad2, inv),
                'p' => now.Hour < 12 ? "AM" : "PM",
                'j' => now.DayOfYear.ToString(noPad ? "0" : "000", inv),
                'B' => now.ToString("MMMM", inv),
                'b' or 'h' => now.ToString("MMM", inv),
                'A' => now.ToString("dddd", inv),
                'a' => now.ToString("ddd", inv),
                'f' => (now.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", inv),
                '%' => "%",
                _ => "%" + (noPad ? "-" : string.Empty) + code,
            });
        }

        return sb.ToString();
    }
}
