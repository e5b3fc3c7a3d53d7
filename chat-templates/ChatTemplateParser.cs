namespace Grid.ChatTemplates;

/// <summary>Recursive-descent parser following Jinja2's grammar and operator precedence.</summary>
internal sealed class ChatTemplateParser
{
    private static readonly HashSet<string> CompareOps = ["==", "!=", "<", ">", "<=", ">="];

    private readonly string _source;
    private readonly List<Token> _tokens;
    private readonly Stack<(string Tag, int Pos, string Close)> _open = new();
    private int _index;
    private int _loopDepth;

    private ChatTemplateParser(string source, List<Token> tokens)
    {
        _source = source;
        _tokens = tokens;
    }

    private Token Current => _tokens[_index];

    public static IReadOnlyList<TemplateNode> Parse(string source, List<Token> tokens) =>
        new ChatTemplateParser(source, tokens).ParseBody([], out _);

    // ---- statements ----

    /// <summary>Parses nodes until a block tag named in <paramref name="endTags"/> (its name is consumed, the rest of the tag is not).</summary>
    private List<TemplateNode> ParseBody(string[] endTags, out string endTag)
    {
        var nodes = new List<TemplateNode>();
        while (true)
        {
            var token = Current;
            switch (token.Kind)
            {
                case TokenKind.Data:
                    Advance();
                    nodes.Add(new TextNode(token.Position, token.Value));
                    break;
                case TokenKind.VariableBegin:
                    Advance();
                    var value = ParseTuple();
                    Expect(TokenKind.VariableEnd);
                    nodes.Add(new OutputNode(token.Position, value));
                    break;
                case TokenKind.BlockBegin:
                    Advance();
                    var name = Current;
                    if (name.Kind != TokenKind.Name)
                    {
                        throw Error(name, $"expected a tag name after '{{%' but found {name.Describe()}");
                    }

                    if (Array.IndexOf(endTags, name.Value) >= 0)
                    {
                        Advance();
                        endTag = name.Value;
                        return nodes;
                    }

                    nodes.Add(ParseStatement(token.Position));
                    break;
                case TokenKind.Eof:
                    if (endTags.Length == 0)
                    {
                        endTag = string.Empty;
                        return nodes;
                    }

                    var (tag, pos, close) = _open.Peek();
                    throw Error(token, $"unexpected end of template: missing '{{% {close} %}}' for the '{tag}' block opened at {ChatTemplateException.Location(_source, pos)}");
                default:
                    throw Error(token, $"unexpected {token.Describe()}");
            }
        }
    }

    private TemplateNode ParseStatement(int pos)
    {
        var name = Advance();
        switch (name.Value)
        {
            case "if":
                return WithOpenBlock("if", pos, "endif", () => ParseIf(pos));
            case "for":
                return WithOpenBlock("for", pos, "endfor", () => ParseFor(pos));
            case "set":
                return WithOpenBlock("set", pos, "endset", () => ParseSet(pos));
            case "generation":
                return WithOpenBlock("generation", pos, "endgeneration", () =>
                {
                    ExpectBlockEnd();
                    var body = ParseBody(["endgeneration"], out _);
                    ExpectBlockEnd();
                    return new GenerationNode(pos, body);
                });
            case "break" or "continue":
                if (_loopDepth == 0)
                {
                    throw Error(name, $"'{name.Value}' outside of a for loop");
                }

                ExpectBlockEnd();
                return name.Value == "break" ? new BreakNode(pos) : new ContinueNode(pos);
            default:
                string expected = _open.Count > 0
                    ? $"; expected '{{% {_open.Peek().Close} %}}' to close the '{_open.Peek().Tag}' block opened at {ChatTemplateException.Location(_source, _open.Peek().Pos)}"
                    : string.Empty;
                bool isEndTag = name.Value.StartsWith("end", StringComparison.Ordinal) || name.Value is "elif" or "else";
                throw Error(name, isEndTag
                    ? $"unexpected tag '{name.Value}'{expected}"
                    : $"unknown or unsupported tag '{name.Value}'{expected}");
        }
    }

    private TemplateNode WithOpenBlock(string tag, int pos, string close, Func<TemplateNode> parse)
    {
        _open.Push((tag, pos, close));
        try
        {
            return parse();
        }
        finally
        {
            _open.Pop();
        }
    }

    private IfNode ParseIf(int pos)
    {
        var branches = new List<(Expr, IReadOnlyList<TemplateNode>)>();
        List<TemplateNode>? elseBody = null;
        var condition = ParseTuple(withCondExpr: false);
        ExpectBlockEnd();
        while (true)
        {
            var body = ParseBody(["elif", "else", "endif"], out string end);
            branches.Add((condition, body));
            if (end == "elif")
            {
                condition = ParseTuple(withCondExpr: false);
                ExpectBlockEnd();
                continue;
            }

            if (end == "else")
            {
                ExpectBlockEnd();
                elseBody = ParseBody(["endif"], out _);
            }

            ExpectBlockEnd();
            return new IfNode(pos, branches, elseBody);
        }
    }

    private ForNode ParseFor(int pos)
    {
        var targets = new List<string>();
        bool parenthesized = Current.IsOp("(");
        if (parenthesized)
        {
            Advance();
        }

        do
        {
            targets.Add(ExpectName());
        }
        while (TryOp(","));

        if (parenthesized)
        {
            ExpectOp(")");
        }

        if (!Current.IsName("in"))
        {
            throw Error(Current, $"expected 'in' in for loop but found {Current.Describe()}");
        }

        Advance();
        var iterable = ParseTuple(withCondExpr: false);
        Expr? filter = null;
        if (Current.IsName("if"))
        {
            Advance();
            filter = ParseExpression();
        }

        if (Current.IsName("recursive"))
        {
            throw Error(Current, "recursive for loops are not supported");
        }

        ExpectBlockEnd();
        _loopDepth++;
        var body = ParseBody(["else", "endfor"], out string end);
        _loopDepth--;
        List<TemplateNode>? elseBody = null;
        if (end == "else")
        {
            ExpectBlockEnd();
            int savedDepth = _loopDepth;
            _loopDepth = 0;
            elseBody = ParseBody(["endfor"], out _);
            _loopDepth = savedDepth;
        }

        ExpectBlockEnd();
        return new ForNode(pos, targets, iterable, filter, body, elseBody);
    }

    private TemplateNode ParseSet(int pos)
    {
        var names = new List<string> { ExpectName() };
        string? attribute = null;
        if (TryOp("."))
        {
            attribute = ExpectName();
        }
        else
        {
            while (TryOp(","))
            {
                names.Add(ExpectName());
            }
        }

        var target = new SetTarget(names, attribute);
        if (TryOp("="))
        {
            var value = ParseTuple();
            ExpectBlockEnd();
            return new SetNode(pos, target, value);
        }

        if (Current.Kind == TokenKind.BlockEnd && names.Count == 1)
        {
            Advance();
            var body = ParseBody(["endset"], out _);
            ExpectBlockEnd();
            return new SetBlockNode(pos, target, body);
        }

        throw Error(Current, $"expected '=' in set statement but found {Current.Describe()}");
    }

    // ---- expressions (precedence as in jinja2/parser.py) ----

    private Expr ParseTuple(bool withCondExpr = true, bool explicitParentheses = false)
    {
        int pos = Current.Position;
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0)
            {
                ExpectOp(",");
            }

            if (Current.Kind is TokenKind.VariableEnd or TokenKind.BlockEnd || Current.IsOp(")"))
            {
                break;
            }

            items.Add(withCondExpr ? ParseExpression() : ParseOr());
            if (Current.IsOp(","))
            {
                isTuple = true;
            }
            else
            {
                break;
            }
        }

        if (!isTuple)
        {
            if (items.Count > 0)
            {
                return items[0];
            }

            if (!explicitParentheses)
            {
                throw Error(Current, $"expected an expression but found {Current.Describe()}");
            }
        }

        return new TupleExpr(pos, items);
    }

    private Expr ParseExpression()
    {
        var expr = ParseOr();
        while (Current.IsName("if"))
        {
            int pos = Advance().Position;
            var test = ParseOr();
            Expr? otherwise = null;
            if (Current.IsName("else"))
            {
                Advance();
                otherwise = ParseExpression();
            }

            expr = new CondExpr(pos, test, expr, otherwise);
        }

        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (Current.IsName("or"))
        {
            int pos = Advance().Position;
            left = new BinaryExpr(pos, "or", left, ParseAnd());
        }

        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (Current.IsName("and"))
        {
            int pos = Advance().Position;
            left = new BinaryExpr(pos, "and", left, ParseNot());
        }

        return left;
    }

    private Expr ParseNot()
    {
        if (Current.IsName("not"))
        {
            int pos = Advance().Position;
            return new UnaryExpr(pos, "not", ParseNot());
        }

        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        int pos = Current.Position;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Operator && CompareOps.Contains(Current.Value))
            {
                string op = Advance().Value;
                rest.Add((op, ParseMath1()));
            }
            else if (Current.IsName("in"))
            {
                Advance();
                rest.Add(("in", ParseMath1()));
            }
            else if (Current.IsName("not") && Peek().IsName("in"))
            {
                Advance();
                Advance();
                rest.Add(("notin", ParseMath1()));
            }
            else
            {
                break;
            }
        }

        return rest.Count == 0 ? first : new CompareExpr(pos, first, rest);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Current.IsOp("+") || Current.IsOp("-"))
        {
            var op = Advance();
            left = new BinaryExpr(op.Position, op.Value, left, ParseConcat());
        }

        return left;
    }

    private Expr ParseConcat()
    {
        var left = ParseMath2();
        while (Current.IsOp("~"))
        {
            int pos = Advance().Position;
            left = new BinaryExpr(pos, "~", left, ParseMath2());
        }

        return left;
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (Current.IsOp("*") || Current.IsOp("/") || Current.IsOp("//") || Current.IsOp("%"))
        {
            var op = Advance();
            left = new BinaryExpr(op.Position, op.Value, left, ParsePow());
        }

        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary();
        while (Current.IsOp("**"))
        {
            int pos = Advance().Position;
            left = new BinaryExpr(pos, "**", left, ParseUnary());
        }

        return left;
    }

    private Expr ParseUnary(bool withFilter = true)
    {
        Expr node;
        if (Current.IsOp("-") || Current.IsOp("+"))
        {
            var op = Advance();
            node = new UnaryExpr(op.Position, op.Value, ParseUnary(withFilter: false));
        }
        else
        {
            node = ParsePrimary();
        }

        node = ParsePostfix(node);
        return withFilter ? ParseFilterExpr(node) : node;
    }

    private Expr ParsePrimary()
    {
        var token = Current;
        switch (token.Kind)
        {
            case TokenKind.Name:
                Advance();
                return token.Value switch
                {
                    "true" or "True" => new ConstExpr(token.Position, true),
                    "false" or "False" => new ConstExpr(token.Position, false),
                    "none" or "None" => new ConstExpr(token.Position, null),
                    _ => new NameExpr(token.Position, token.Value),
                };
            case TokenKind.String:
                Advance();
                string text = token.Value;
                while (Current.Kind == TokenKind.String)
                {
                    text += Advance().Value; // adjacent literals concatenate, as in Python
                }

                return new ConstExpr(token.Position, text);
            case TokenKind.Integer or TokenKind.Float:
                Advance();
                return new ConstExpr(token.Position, token.Number);
            case TokenKind.Operator when token.Value == "(":
            {
                Advance();
                var inner = ParseTuple(explicitParentheses: true);
                ExpectOp(")");
                return inner;
            }

            case TokenKind.Operator when token.Value == "[":
            {
                Advance();
                var items = new List<Expr>();
                while (!Current.IsOp("]"))
                {
                    if (items.Count > 0)
                    {
                        ExpectOp(",");
                        if (Current.IsOp("]"))
                        {
                            break;
                        }
                    }

                    items.Add(ParseExpression());
                }

                Advance();
                return new ListExpr(token.Position, items);
            }

            case TokenKind.Operator when token.Value == "{":
            {
                Advance();
                var items = new List<(Expr, Expr)>();
                while (!Current.IsOp("}"))
                {
                    if (items.Count > 0)
                    {
                        ExpectOp(",");
                        if (Current.IsOp("}"))
                        {
                            break;
                        }
                    }

                    var key = ParseExpression();
                    ExpectOp(":");
                    items.Add((key, ParseExpression()));
                }

                Advance();
                return new DictExpr(token.Position, items);
            }

            default:
                throw Error(token, $"expected an expression but found {token.Describe()}");
        }
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            var token = Current;
            if (token.IsOp("."))
            {
                Advance();
                var attr = Advance();
                node = attr.Kind switch
                {
                    TokenKind.Name => new GetAttrExpr(token.Position, node, attr.Value),
                    TokenKind.Integer => new GetItemExpr(token.Position, node, new ConstExpr(attr.Position, attr.Number)),
                    _ => throw Error(attr, $"expected an attribute name after '.' but found {attr.Describe()}"),
                };
            }
            else if (token.IsOp("["))
            {
                Advance();
                node = ParseSubscript(token.Position, node);
            }
            else if (token.IsOp("("))
            {
                node = new CallExpr(token.Position, node, ParseCallArgs());
            }
            else
            {
                return node;
            }
        }
    }

    private Expr ParseSubscript(int pos, Expr target)
    {
        Expr? start = null;
        if (!Current.IsOp(":"))
        {
            var index = ParseExpression();
            if (!Current.IsOp(":"))
            {
                ExpectOp("]");
                return new GetItemExpr(pos, target, index);
            }

            start = index;
        }

        Advance(); // ':'
        Expr? stop = null;
        Expr? step = null;
        if (!Current.IsOp("]") && !Current.IsOp(":"))
        {
            stop = ParseExpression();
        }

        if (TryOp(":") && !Current.IsOp("]"))
        {
            step = ParseExpression();
        }

        ExpectOp("]");
        return new SliceExpr(pos, target, start, stop, step);
    }

    private ArgList ParseCallArgs()
    {
        ExpectOp("(");
        var positional = new List<Expr>();
        var named = new List<(string, Expr)>();
        while (!Current.IsOp(")"))
        {
            if (positional.Count + named.Count > 0)
            {
                ExpectOp(",");
                if (Current.IsOp(")"))
                {
                    break;
                }
            }

            if (Current.Kind == TokenKind.Name && Peek().IsOp("="))
            {
                string name = Advance().Value;
                Advance();
                named.Add((name, ParseExpression()));
            }
            else if (named.Count > 0)
            {
                throw Error(Current, "positional argument follows keyword argument");
            }
            else
            {
                positional.Add(ParseExpression());
            }
        }

        Advance();
        return new ArgList(positional, named);
    }

    private Expr ParseFilterExpr(Expr node)
    {
        while (true)
        {
            var token = Current;
            if (token.IsOp("|"))
            {
                Advance();
                var name = Current;
                string filter = ExpectName();
                if (!ChatTemplateBuiltins.HasFilter(filter))
                {
                    throw Error(name, $"unknown filter '{filter}'");
                }

                var args = Current.IsOp("(") ? ParseCallArgs() : ArgList.Empty;
                node = new FilterExpr(token.Position, node, filter, args);
            }
            else if (token.IsName("is"))
            {
                Advance();
                bool negated = false;
                if (Current.IsName("not"))
                {
                    Advance();
                    negated = true;
                }

                var name = Current;
                string test = ExpectName();
                if (!ChatTemplateBuiltins.HasTest(test))
                {
                    throw Error(name, $"unknown test '{test}'");
                }

                ArgList args = ArgList.Empty;
                if (Current.IsOp("("))
                {
                    args = ParseCallArgs();
                }
                else if ((Current.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float ||
                          Current.IsOp("[") || Current.IsOp("{")) &&
                         !Current.IsName("else") && !Current.IsName("or") && !Current.IsName("and"))
                {
                    if (Current.IsName("is"))
                    {
                        throw Error(Current, "you cannot chain multiple tests with 'is'");
                    }

                    args = new ArgList([ParsePostfix(ParsePrimary())], []);
                }

                node = new TestExpr(token.Position, node, test, args, negated);
            }
            else if (token.IsOp("("))
            {
                node = new CallExpr(token.Position, node, ParseCallArgs());
            }
            else
            {
                return node;
            }
        }
    }

    // ---- token helpers ----

    private Token Peek() => _tokens[Math.Min(_index + 1, _tokens.Count - 1)];

    private Token Advance()
    {
        var token = _tokens[_index];
        if (_index < _tokens.Count - 1)
        {
            _index++;
        }

        return token;
    }

    private bool TryOp(string op)
    {
        if (!Current.IsOp(op))
        {
            return false;
        }

        Advance();
        return true;
    }

    private void ExpectOp(string op)
    {
        if (!TryOp(op))
        {
            throw Error(Current, $"expected '{op}' but found {Current.Describe()}");
        }
    }

    private string ExpectName()
    {
        if (Current.Kind != TokenKind.Name)
        {
            throw Error(Current, $"expected a name but found {Current.Describe()}");
        }

        return Advance().Value;
    }

    private void Expect(TokenKind kind)
    {
        if (Current.Kind != kind)
        {
            string wanted = new Token(kind, string.Empty, 0).Describe();
            throw Error(Current, $"expected {wanted} but found {Current.Describe()}");
        }

        Advance();
    }

    private void ExpectBlockEnd() => Expect(TokenKind.BlockEnd);

    private ChatTemplateException Error(Token token, string message) =>
        ChatTemplateException.Syntax(_source, token.Position, message);
}
