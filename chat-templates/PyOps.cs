using System.Collections;
using System.Globalization;
using System.Text;

namespace Grid.ChatTemplates;

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
