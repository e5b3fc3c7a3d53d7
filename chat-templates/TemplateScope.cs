namespace Grid.ChatTemplates;

/// <summary>
/// A variable scope. As in Jinja2, every for-loop iteration gets a fresh child scope, so <c>{% set %}</c> inside a
/// loop body never leaks out (or into the next iteration); <c>if</c> blocks do not create scopes.
/// </summary>
internal sealed class TemplateScope(TemplateScope? parent)
{
    private readonly Dictionary<string, object?> _variables = new(StringComparer.Ordinal);

    public bool TryGet(string name, out object? value)
    {
        for (var scope = this; scope is not null; scope = scope.Parent)
        {
            if (scope._variables.TryGetValue(name, out value))
            {
                return true;
            }
        }

        value = null;
        return false;
    }

    public void Set(string name, object? value) => _variables[name] = value;

    private TemplateScope? Parent { get; } = parent;
}
