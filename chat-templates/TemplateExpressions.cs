namespace Grid.ChatTemplates;

internal abstract record Expr(int Pos);

internal sealed record ConstExpr(int Pos, object? Value) : Expr(Pos);

internal sealed record NameExpr(int Pos, string Name) : Expr(Pos);

internal sealed record ListExpr(int Pos, IReadOnlyList<Expr> Items) : Expr(Pos);

internal sealed record TupleExpr(int Pos, IReadOnlyList<Expr> Items) : Expr(Pos);

internal sealed record DictExpr(int Pos, IReadOnlyList<(Expr Key, Expr Value)> Items) : Expr(Pos);

internal sealed record GetAttrExpr(int Pos, Expr Target, string Name) : Expr(Pos);

internal sealed record GetItemExpr(int Pos, Expr Target, Expr Index) : Expr(Pos);

internal sealed record SliceExpr(int Pos, Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr(Pos);

internal sealed record ArgList(IReadOnlyList<Expr> Positional, IReadOnlyList<(string Name, Expr Value)> Named)
{
    public static readonly ArgList Empty = new([], []);
}

internal sealed record CallExpr(int Pos, Expr Callee, ArgList Args) : Expr(Pos);

internal sealed record FilterExpr(int Pos, Expr Value, string Name, ArgList Args) : Expr(Pos);

internal sealed record TestExpr(int Pos, Expr Value, string Name, ArgList Args, bool Negated) : Expr(Pos);

/// <summary>Unary operators: "-", "+", "not".</summary>
internal sealed record UnaryExpr(int Pos, string Op, Expr Operand) : Expr(Pos);

/// <summary>Binary operators: + - * / // % ** ~ and "and"/"or" (short-circuit, Python value semantics).</summary>
internal sealed record BinaryExpr(int Pos, string Op, Expr Left, Expr Right) : Expr(Pos);

/// <summary>Chained comparison <c>a &lt; b &lt;= c</c>; ops: == != &lt; &gt; &lt;= &gt;= in notin.</summary>
internal sealed record CompareExpr(int Pos, Expr First, IReadOnlyList<(string Op, Expr Operand)> Rest) : Expr(Pos);

internal sealed record CondExpr(int Pos, Expr Test, Expr Then, Expr? Else) : Expr(Pos);
