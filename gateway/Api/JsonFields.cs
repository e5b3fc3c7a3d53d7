using System.Text.Json;

namespace Grid.Gateway.Api;

/// <summary>
/// Typed reads of a request's JSON fields, with a precise OpenAI error (<c>invalid_type</c>, <c>out_of_range</c>)
/// for every kind of bad input. An absent field and a null field both mean "default".
/// </summary>
public static class JsonFields
{
    /// <summary>A JSON value's kind as error messages name it ("a string", "an array", ...).</summary>
    public static string Kind(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => "nothing",
    };

    /// <summary>The field, or false when it is absent or null (null means "default", as in OpenAI's API).</summary>
    public static bool Field(this JsonElement obj, string name, out JsonElement value) =>
        obj.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    public static string? OptString(this JsonElement obj, string name)
    {
        if (!obj.Field(name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.String) throw ApiException.InvalidType(name, $"a string, got {Kind(v.ValueKind)}");
        return v.GetString();
    }

    public static bool? OptBool(this JsonElement obj, string name)
    {
        if (!obj.Field(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiException.InvalidType(name, $"a boolean, got {Kind(v.ValueKind)}"),
        };
    }

    public static double? OptDouble(this JsonElement obj, string name)
    {
        if (!obj.Field(name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.InvalidType(name, $"a number, got {Kind(v.ValueKind)}");
        return v.GetDouble();
    }

    public static long? OptLong(this JsonElement obj, string name) =>
        obj.Field(name, out var v) ? Integer(v, name, long.MinValue, long.MaxValue) : null;

    public static int? OptInt(this JsonElement obj, string name, int min, int max) =>
        obj.Field(name, out var v) ? (int)Integer(v, name, min, max) : null;

    /// <summary>An integer (16.0 counts; 16.5 does not) within [min, max].</summary>
    public static long Integer(JsonElement v, string name, long min, long max)
    {
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.InvalidType(name, $"an integer, got {Kind(v.ValueKind)}");
        if (!v.TryGetInt64(out var x))
        {
            var d = v.GetDouble();
            if (Math.Floor(d) != d) throw ApiException.InvalidType(name, $"an integer, got {v.GetRawText()}");
            throw ApiException.OutOfRange($"'{name}' must be between {min} and {max}, got {v.GetRawText()}", name);
        }
        if (x < min || x > max) throw ApiException.OutOfRange($"'{name}' must be between {min} and {max}, got {x}", name);
        return x;
    }

    /// <summary><c>stop</c>: a string or a list of at most <paramref name="maxCount"/> strings, each at most <paramref name="maxLength"/> characters.</summary>
    public static string[] Stops(this JsonElement obj, string name, int maxCount, int maxLength)
    {
        if (!obj.Field(name, out var v)) return [];
        string[] stops;
        if (v.ValueKind == JsonValueKind.String) stops = [v.GetString()!];
        else if (v.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType(name, $"a string or a list of strings, got {Kind(v.ValueKind)}");
        else
        {
            if (v.GetArrayLength() > maxCount) throw ApiException.OutOfRange($"'{name}' may hold at most {maxCount} strings, got {v.GetArrayLength()}", name);
            stops = v.EnumerateArray().Select((s, i) => s.ValueKind == JsonValueKind.String ? s.GetString()!
                : throw ApiException.InvalidType($"{name}[{i}]", $"a string, got {Kind(s.ValueKind)}")).ToArray();
        }
        for (int i = 0; i < stops.Length; i++)
            if (stops[i].Length > maxLength)
                throw ApiException.OutOfRange($"each '{name}' string may be at most {maxLength} characters long; " +
                    $"{(v.ValueKind == JsonValueKind.String ? "it" : $"{name}[{i}]")} has {stops[i].Length}", name);
        return stops;
    }

    /// <summary>A list of token ids within the vocabulary.</summary>
    public static int[] TokenIds(JsonElement v, string name, int vocab)
    {
        if (v.ValueKind != JsonValueKind.Array) throw ApiException.InvalidType(name, $"a list of token ids, got {Kind(v.ValueKind)}");
        var ids = new int[v.GetArrayLength()];
        int i = 0;
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number) throw ApiException.InvalidType($"{name}[{i}]", $"an integer token id, got {Kind(e.ValueKind)}");
            if (!e.TryGetInt64(out var id))
            {
                var d = e.GetDouble();
                if (Math.Floor(d) != d) throw ApiException.InvalidType($"{name}[{i}]", $"an integer token id, got {e.GetRawText()}");
                id = long.MaxValue;
            }
            if (id < 0 || id >= vocab) throw ApiException.OutOfRange($"token id {e.GetRawText()} in '{name}' is outside the vocabulary (0..{vocab - 1})", name);
            ids[i++] = (int)id;
        }
        return ids;
    }
}
