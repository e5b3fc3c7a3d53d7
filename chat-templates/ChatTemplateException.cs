namespace Grid.ChatTemplates;

/// <summary>A chat template failed to parse or render. The message is a single line and includes the position when known.</summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException()
        : base("Chat template error.")
    {
    }

    public ChatTemplateException(string message)
        : base(message)
    {
    }

    public ChatTemplateException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    private ChatTemplateException(string message, int line, int column)
        : base(message)
    {
        Line = line;
        Column = column;
    }

    /// <summary>1-based line of the offending template position, when known.</summary>
    public int? Line { get; }

    /// <summary>1-based column of the offending template position, when known.</summary>
    public int? Column { get; }

    internal static ChatTemplateException Syntax(string source, int offset, string message) =>
        Located(source, offset, "Chat template syntax error", message);

    internal static ChatTemplateException Runtime(string source, int offset, string message) =>
        Located(source, offset, "Chat template render error", message);

    internal static string Location(string source, int offset)
    {
        var (line, column) = LineColumn(source, offset);
        return $"line {line}, column {column}";
    }

    private static ChatTemplateException Located(string source, int offset, string prefix, string message)
    {
        var (line, column) = LineColumn(source, offset);
        string oneLine = message.Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
        return new ChatTemplateException($"{prefix} at line {line}, column {column}: {oneLine}", line, column);
    }

    private static (int Line, int Column) LineColumn(string source, int offset)
    {
        offset = Math.Clamp(offset, 0, source.Length);
        int line = 1;
        int lineStart = 0;
        for (int i = 0; i < offset; i++)
        {
            if (source[i] == '\n')
            {
                line++;
                lineStart = i + 1;
            }
        }

        return (line, offset - lineStart + 1);
    }
}
