namespace Grid.ChatTemplates;

/// <summary>Object created by <c>namespace()</c>; its attributes can be assigned with <c>{% set ns.x = ... %}</c>.</summary>
internal sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}
