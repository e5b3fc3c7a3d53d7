namespace Grid.ChatTemplates;

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
