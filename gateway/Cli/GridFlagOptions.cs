using System.CommandLine;
using System.Globalization;

namespace Grid.Gateway.Cli;

/// <summary>
/// The <see cref="GridFlags"/> of one executable as System.CommandLine options, typed like the keys they set; a given
/// flag becomes a configuration override of its key (flags win over environment variables and appsettings.json).
/// </summary>
public sealed class GridFlagOptions
{
    readonly List<(GridFlag Flag, Option Option, Func<ParseResult, IEnumerable<string>> Values)> _options = [];

    public GridFlagOptions(GridExecutable executable)
    {
        foreach (var flag in GridFlags.For(executable))
        {
            var description = $"{flag.Description} ({flag.Key})";
            var t = flag.ValueType;
            _options.Add(
                t == typeof(int) ? Make<int>(flag, description) :
                t == typeof(long) ? Make<long>(flag, description) :
                t == typeof(double) ? Make<double>(flag, description) :
                t == typeof(bool) ? MakeSwitch(flag, description) :
                flag.IsList ? MakeList(flag, description) :
                flag.ManyValues ? MakeJoined(flag, description) :
                MakeString(flag, description));
        }
    }

    public void AddTo(Command command)
    {
        foreach (var (_, option, _) in _options) command.Options.Add(option);
    }

    /// <summary>The keys of the flags given on this command line, as configuration overrides.</summary>
    public Dictionary<string, string?> Overrides(ParseResult parse)
    {
        var overrides = new Dictionary<string, string?>();
        foreach (var (flag, option, values) in _options)
        {
            if (parse.GetResult(option) is null) continue;
            var list = values(parse).ToList();
            if (flag.IsList)
                for (int i = 0; i < list.Count; i++) overrides[$"{flag.Key}:{i}"] = list[i];
            else if (list.Count > 0)
                overrides[flag.Key] = list[0];
        }
        return overrides;
    }

    static (GridFlag, Option, Func<ParseResult, IEnumerable<string>>) Make<T>(GridFlag flag, string description) where T : struct, IFormattable
    {
        var o = new Option<T?>(flag.Name) { Description = description };
        return (flag, o, p => p.GetValue(o) is { } v ? [v.ToString(null, CultureInfo.InvariantCulture)] : []);
    }

    static (GridFlag, Option, Func<ParseResult, IEnumerable<string>>) MakeSwitch(GridFlag flag, string description)
    {
        var o = new Option<bool>(flag.Name) { Description = description };
        if (flag.Negation is { } negation)
        {
            // vLLM's pair: --enable-prefix-caching / --no-enable-prefix-caching (the negation wins when both are given).
            o.Aliases.Add(negation);
            return (flag, o, p => [p.Tokens.Any(t => t.Value == negation) ? "false" : p.GetValue(o) ? "true" : "false"]);
        }
        return (flag, o, p => [p.GetValue(o) ? "true" : "false"]);
    }

    static (GridFlag, Option, Func<ParseResult, IEnumerable<string>>) MakeList(GridFlag flag, string description)
    {
        var o = new Option<string[]>(flag.Name) { Description = description, AllowMultipleArgumentsPerToken = false };
        return (flag, o, p => p.GetValue(o) ?? []);
    }

    static (GridFlag, Option, Func<ParseResult, IEnumerable<string>>) MakeJoined(GridFlag flag, string description)
    {
        var o = new Option<string[]>(flag.Name) { Description = description, AllowMultipleArgumentsPerToken = true, Arity = ArgumentArity.OneOrMore };
        return (flag, o, p => p.GetValue(o) is { Length: > 0 } v ? [string.Join(' ', v)] : []);
    }

    static (GridFlag, Option, Func<ParseResult, IEnumerable<string>>) MakeString(GridFlag flag, string description)
    {
        var o = new Option<string?>(flag.Name) { Description = description };
        return (flag, o, p => p.GetValue(o) is { } v ? [v] : []);
    }
}
