using System.Text;

namespace Grid.ChatTemplates;

/// <summary>Tree-walking evaluator for parsed chat templates.</summary>
internal sealed class ChatTemplateRenderer
{
    private readonly string _source;

    private ChatTemplateRenderer(string source) => _source = source;

    private enum Flow
    {
        Normal,
        Break,
        Continue,
    }

    public static string Render(string source, IReadOnlyList<TemplateNode> body, TemplateScope globals)
    {
        var output = new StringBuilder();
        new ChatTemplateRenderer(source).Exec(body, new TemplateScope(globals), output);
        return output.ToString();
    }

    // ---- statements ----

    private Flow Exec(IReadOnlyList<TemplateNode> nodes, TemplateScope scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            var flow = ExecNode(node, scope, output);
            if (flow != Flow.Normal)
            {
                return flow;
            }
        }

        return Flow.Normal;
    }

    private Flow ExecNode(TemplateNode node, TemplateScope scope, StringBuilder output)
    {
        try
        {
            switch (node)
            {
                case TextNode text:
                    output.Append(text.Text);
                    return Flow.Normal;
                case OutputNode value:
                    output.Append(PyOps.Str(Eval(value.Value, scope)));
                    return Flow.Normal;
                case IfNode conditional:
                    foreach (var (condition, body) in conditional.Branches)
                    {
                        if (PyOps.Truthy(Eval(condition, scope)))
                        {
                            return Exec(body, scope, output);
                        }
                    }

                    return conditional.Else is null ? Flow.Normal : Exec(conditional.Else, scope, output);
                case ForNode loop:
                    ExecFor(loop, scope, output);
                    return Flow.Normal;
                case SetNode set:
                    Assign(set.Target, Eval(set.Value, scope), scope);
                    return Flow.Normal;
                case SetBlockNode setBlock:
                    var captured = new StringBuilder();
                    Exec(setBlock.Body, new TemplateScope(scope), captured);
                    Assign(setBlock.Target, captured.ToString(), scope);
                    return Flow.Normal;
                case GenerationNode generation:
                    return Exec(generation.Body, scope, output);
                case BreakNode:
                    return Flow.Break;
                case ContinueNode:
                    return Flow.Continue;
                default:
                    throw new InvalidOperationException($"Unknown template node {node.GetType().Name}.");
            }
        }
        catch (TemplateRuntimeError ex)
        {
            throw ChatTemplateException.Runtime(_source, node.Pos, ex.Message);
        }
    }

    private void ExecFor(ForNode loop, TemplateScope scope, StringBuilder output)
    {
        object? iterable = Eval(loop.Iterable, scope);
        var items = new List<object?>();
        foreach (object? item in PyOps.Iterate(iterable))
        {
            if (loop.Filter is not null)
            {
                var filterScope = new TemplateScope(scope);
                Unpack(loop.Targets, item, filterScope);
                if (!PyOps.Truthy(Eval(loop.Filter, filterScope)))
                {
                    continue;
                }
            }

            items.Add(item);
        }

        if (items.Count == 0)
        {
            if (loop.Else is not null)
            {
                Exec(loop.Else, new TemplateScope(scope), output);
            }

            return;
        }

        var context = new LoopContext(items, depth: 1);
        for (int i = 0; i < items.Count; i++)
        {
            context.Index0 = i;
            var iterationScope = new TemplateScope(scope);
            iterationScope.Set("loop", context);
            Unpack(loop.Targets, items[i], iterationScope);
            if (Exec(loop.Body, iterationScope, output) == Flow.Break)
            {
                break;
            }
        }
    }

    private static void Assign(SetTarget target, object? value, TemplateScope scope)
    {
        if (target.Attribute is null)
        {
            Unpack(target.Names, value, scope);
            return;
        }

        string name = target.Names[0];
        if (!scope.TryGet(name, out object? holder))
        {
            throw new TemplateRuntimeError($"'{name}' is undefined");
        }

        if (holder is not Namespace ns)
        {
            throw new TemplateRuntimeError("cannot assign attribute on non-namespace object");
        }

        ns.Attributes[target.Attribute] = value;
    }

    private static void Unpack(IReadOnlyList<string> names, object? value, TemplateScope scope)
    {
        if (names.Count == 1)
        {
            scope.Set(names[0], value);
            return;
        }

        var items = PyOps.Iterate(value);
        if (items.Count != names.Count)
        {
            throw new TemplateRuntimeError(items.Count > names.Count
                ? $"too many values to unpack (expected {names.Count})"
                : $"not enough values to unpack (expected {names.Count}, got {items.Count})");
        }

        for (int i = 0; i < names.Count; i++)
        {
            scope.Set(names[i], items[i]);
        }
    }

    // ---- expressions ----

    private object? Eval(Expr expr, TemplateScope scope)
    {
        try
        {
            return EvalCore(expr, scope);
        }
        catch (TemplateRuntimeError ex)
        {
            throw ChatTemplateException.Runtime(_source, expr.Pos, ex.Message);
        }
    }

    private object? EvalCore(Expr expr, TemplateScope scope)
    {
        switch (expr)
        {
            case ConstExpr constant:
                return constant.Value;
            case NameExpr name:
                if (scope.TryGet(name.Name, out object? value))
                {
                    return value;
                }

                return ChatTemplateBuiltins.TryGetGlobal(name.Name, out var function)
                    ? function
                    : new Undefined($"'{name.Name}' is undefined");
            case ListExpr list:
                return list.Items.Select(item => Eval(item, scope)).ToList();
            case TupleExpr tuple:
                return tuple.Items.Select(item => Eval(item, scope)).ToArray();
            case DictExpr dict:
                var result = new PyDict();
                foreach (var (keyExpr, valueExpr) in dict.Items)
                {
                    object? key = Eval(keyExpr, scope);
                    if (key is null or Undefined or List<object?> or PyDict)
                    {
                        throw new TemplateRuntimeError($"unsupported dict key type: '{PyOps.TypeName(key)}'");
                    }

                    result[key] = Eval(valueExpr, scope);
                }

                return result;
            case GetAttrExpr attr:
                return GetAttr(Eval(attr.Target, scope), attr.Name);
            case GetItemExpr item:
                return GetItem(Eval(item.Target, scope), Eval(item.Index, scope));
            case SliceExpr slice:
                return Slice(
                    Eval(slice.Target, scope),
                    slice.Start is null ? null : Eval(slice.Start, scope),
                    slice.Stop is null ? null : Eval(slice.Stop, scope),
                    slice.Step is null ? null : Eval(slice.Step, scope));
            case CallExpr call:
                return EvalCall(call, scope);
            case FilterExpr filter:
                return ChatTemplateBuiltins.ApplyFilter(filter.Name, Eval(filter.Value, scope), EvalArgs(filter.Args, scope));
            case TestExpr test:
                bool passed = ChatTemplateBuiltins.ApplyTest(test.Name, Eval(test.Value, scope), EvalArgs(test.Args, scope));
                return passed != test.Negated;
            case UnaryExpr unary:
                return EvalUnary(unary.Op, Eval(unary.Operand, scope));
            case BinaryExpr { Op: "and" } and:
                object? left = Eval(and.Left, scope);
                return PyOps.Truthy(left) ? Eval(and.Right, scope) : left;
            case BinaryExpr { Op: "or" } or:
                object? first = Eval(or.Left, scope);
                return PyOps.Truthy(first) ? first : Eval(or.Right, scope);
            case BinaryExpr binary:
                return PyOps.Binary(binary.Op, Eval(binary.Left, scope), Eval(binary.Right, scope));
            case CompareExpr compare:
                object? current = Eval(compare.First, scope);
                foreach (var (op, operandExpr) in compare.Rest)
                {
                    object? operand = Eval(operandExpr, scope);
                    if (!CompareOp(op, current, operand))
                    {
                        return false;
                    }

                    current = operand;
                }

                return true;
            case CondExpr conditional:
                if (PyOps.Truthy(Eval(conditional.Test, scope)))
                {
                    return Eval(conditional.Then, scope);
                }

                return conditional.Else is null
                    ? new Undefined("the inline if-expression evaluated to false and no else section was defined")
                    : Eval(conditional.Else, scope);
            default:
                throw new InvalidOperationException($"Unknown expression {expr.GetType().Name}.");
        }
    }

    private object? EvalCall(CallExpr call, TemplateScope scope)
    {
        if (call.Callee is GetAttrExpr method)
        {
            object? target = Eval(method.Target, scope);
            if (target is Undefined undefined)
            {
                throw undefined.Error();
            }

            var methodArgs = EvalArgs(call.Args, scope);
            return ChatTemplateBuiltins.TryCallMethod(target, method.Name, methodArgs, out object? result)
                ? result
                : Invoke(GetAttr(target, method.Name), methodArgs);
        }

        object? callee = Eval(call.Callee, scope);
        return Invoke(callee, EvalArgs(call.Args, scope));
    }

    private static object? Invoke(object? callee, CallArgs args) => callee switch
    {
        Callable function => function.Invoke(args),
        Undefined undefined => throw undefined.Error(),
        _ => throw new TemplateRuntimeError($"'{PyOps.TypeName(callee)}' object is not callable"),
    };

    private CallArgs EvalArgs(ArgList args, TemplateScope scope)
    {
        if (args.Positional.Count == 0 && args.Named.Count == 0)
        {
            return CallArgs.Empty;
        }

        var positional = args.Positional.Select(arg => Eval(arg, scope)).ToList();
        var named = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in args.Named)
        {
            named[name] = Eval(value, scope);
        }

        return new CallArgs(positional, named);
    }

    private static object? EvalUnary(string op, object? value)
    {
        if (op == "not")
        {
            return !PyOps.Truthy(value);
        }

        return value switch
        {
            Undefined undefined => throw undefined.Error(),
            long l => (object)(op == "-" ? -l : l),
            bool b => (object)(op == "-" ? -(b ? 1L : 0L) : (b ? 1L : 0L)),
            double d => (object)(op == "-" ? -d : d),
            _ => throw new TemplateRuntimeError($"bad operand type for unary {op}: '{PyOps.TypeName(value)}'"),
        };
    }

    private static bool CompareOp(string op, object? left, object? right) => op switch
    {
        "==" => PyOps.PyEquals(left, right),
        "!=" => !PyOps.PyEquals(left, right),
        "<" => PyOps.Compare(left, right, op) < 0,
        ">" => PyOps.Compare(left, right, op) > 0,
        "<=" => PyOps.Compare(left, right, op) <= 0,
        ">=" => PyOps.Compare(left, right, op) >= 0,
        "in" => PyOps.Contains(right, left),
        "notin" => !PyOps.Contains(right, left),
        _ => throw new TemplateRuntimeError($"unknown comparison '{op}'"),
    };

    // ---- attribute / item access (Jinja's environment.getattr / getitem) ----

    /// <summary><c>obj.name</c>: dict keys, namespace attributes and loop properties; anything else is Undefined.</summary>
    public static object? GetAttr(object? target, string name) => target switch
    {
        Undefined undefined => throw undefined.Error(),
        PyDict dict => dict.GetOrUndefined(name),
        Namespace ns => ns.Attributes.TryGetValue(name, out object? value)
            ? value
            : new Undefined($"'Namespace' object has no attribute '{name}'"),
        LoopContext loop => loop.Get(name),
        _ => new Undefined($"'{PyOps.TypeName(target)} object' has no attribute '{name}'"),
    };

    /// <summary><c>obj[key]</c>: Python indexing (negative indices allowed); missing keys/indices give Undefined.</summary>
    public static object? GetItem(object? target, object? key)
    {
        switch (target)
        {
            case Undefined undefined:
                throw undefined.Error();
            case PyDict dict:
                return dict.GetOrUndefined(key);
            case IList<object?> list when key is long or bool:
                long index = PyOps.ToLong(key);
                index = index < 0 ? index + list.Count : index;
                return index >= 0 && index < list.Count
                    ? list[(int)index]
                    : new Undefined($"'{PyOps.TypeName(target)} object' has no element {index}");
            case string s when key is long or bool:
                var codePoints = PyText.CodePoints(s);
                long position = PyOps.ToLong(key);
                position = position < 0 ? position + codePoints.Length : position;
                return position >= 0 && position < codePoints.Length
                    ? codePoints[position]
                    : new Undefined($"'str object' has no element {position}");
            case Namespace or LoopContext when key is string name:
                return GetAttr(target, name);
            default:
                return new Undefined($"'{PyOps.TypeName(target)} object' has no attribute {PyOps.Repr(key)}");
        }
    }

    private static object? Slice(object? target, object? start, object? stop, object? step)
    {
        if (target is Undefined undefined)
        {
            throw undefined.Error();
        }

        IReadOnlyList<object?> items = target switch
        {
            string s => PyText.CodePoints(s),
            IList<object?> list => list.ToList(),
            _ => [],
        };
        if (target is not (string or IList<object?>))
        {
            return new Undefined($"'{PyOps.TypeName(target)} object' cannot be sliced");
        }

        long n = items.Count;
        long stride = step is null or Undefined ? 1 : PyOps.ToLong(step);
        if (stride == 0)
        {
            throw new TemplateRuntimeError("slice step cannot be zero");
        }

        long Adjust(object? bound, long whenMissing)
        {
            if (bound is null or Undefined)
            {
                return whenMissing;
            }

            long b = PyOps.ToLong(bound);
            if (b < 0)
            {
                b += n;
                if (b < 0)
                {
                    b = stride < 0 ? -1 : 0;
                }
            }
            else if (b >= n)
            {
                b = stride < 0 ? n - 1 : n;
            }

            return b;
        }

        long from = Adjust(start, stride < 0 ? n - 1 : 0);
        long to = Adjust(stop, stride < 0 ? -1 : n);
        var picked = new List<object?>();
        for (long i = from; stride > 0 ? i < to : i > to; i += stride)
        {
            picked.Add(items[(int)i]);
        }

        return target switch
        {
            string => string.Concat(picked.Cast<string>()),
            object?[] => picked.ToArray(),
            _ => picked,
        };
    }
}
