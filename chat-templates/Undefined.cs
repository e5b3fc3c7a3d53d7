namespace Grid.ChatTemplates;

/// <summary>Jinja's default <c>Undefined</c>: falsy, renders as "", iterates as empty, fails on most other uses.</summary>
internal sealed class Undefined(string hint)
{
    public string Hint { get; } = hint;

    public TemplateRuntimeError Error() => new(Hint);

    public override string ToString() => string.Empty;
}
