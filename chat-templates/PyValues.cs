using System.Collections;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.ChatTemplates;

// Runtime value model (Python semantics):
//   None -> null, bool, int -> long, float -> double, str -> string, list -> List<object?>,
//   tuple -> object?[], dict -> PyDict, plus Undefined, Namespace, LoopContext and Callable.

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
        ChatMessage m => FromMessage(m),
        JsonElement e => FromJson(e),
        JsonNode n => FromJson(JsonSerializer.SerializeToElement(n)),
        IDictionary d => FromDictionary(d),
        IEnumerable<KeyValuePair<string, object?>> pairs => FromPairs(pairs),
        IEnumerable items => items.Cast<object?>().Select(FromClr).ToList(),
        Delegate => throw new ArgumentException("Delegates cannot be passed to a chat template."),
        _ => value.ToString(),
    };

    private static PyDict FromMessage(ChatMessage m)
    {
        var message = new PyDict { ["role"] = m.Role, ["content"] = m.Content };
        if (m.ToolCalls is { } calls)
        {
            message["tool_calls"] = calls.Select(c => (object?)new PyDict
            {
                ["id"] = c.Id,
                ["type"] = "function",
                ["function"] = new PyDict { ["name"] = c.Name, ["arguments"] = c.Arguments },
            }).ToList();
        }

        if (m.ToolCallId is { } id)
        {
            message["tool_call_id"] = id;
        }

        return message;
    }

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
