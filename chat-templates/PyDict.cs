namespace Grid.ChatTemplates;

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
