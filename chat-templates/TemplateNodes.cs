namespace Grid.ChatTemplates;

internal abstract record TemplateNode(int Pos);

internal sealed record TextNode(int Pos, string Text) : TemplateNode(Pos);

internal sealed record OutputNode(int Pos, Expr Value) : TemplateNode(Pos);

internal sealed record IfNode(int Pos, IReadOnlyList<(Expr Condition, IReadOnlyList<TemplateNode> Body)> Branches, IReadOnlyList<TemplateNode>? Else)
    : TemplateNode(Pos);

internal sealed record ForNode(
    int Pos,
    IReadOnlyList<string> Targets,
    Expr Iterable,
    Expr? Filter,
    IReadOnlyList<TemplateNode> Body,
    IReadOnlyList<TemplateNode>? Else) : TemplateNode(Pos);

/// <summary>Assignment target: one or more names (tuple unpacking), or <c>Names[0].Attribute</c> for namespaces.</summary>
internal sealed record SetTarget(IReadOnlyList<string> Names, string? Attribute);

internal sealed record SetNode(int Pos, SetTarget Target, Expr Value) : TemplateNode(Pos);

internal sealed record SetBlockNode(int Pos, SetTarget Target, IReadOnlyList<TemplateNode> Body) : TemplateNode(Pos);

internal sealed record BreakNode(int Pos) : TemplateNode(Pos);

internal sealed record ContinueNode(int Pos) : TemplateNode(Pos);

/// <summary>transformers' <c>{% generation %}</c> marker: rendered transparently.</summary>
internal sealed record GenerationNode(int Pos, IReadOnlyList<TemplateNode> Body) : TemplateNode(Pos);
