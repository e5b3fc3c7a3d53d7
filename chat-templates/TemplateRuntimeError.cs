namespace Grid.ChatTemplates;

/// <summary>A rendering error without a position; the renderer attaches the position of the failing node.</summary>
internal sealed class TemplateRuntimeError(string message) : Exception(message);
