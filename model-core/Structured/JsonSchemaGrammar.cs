using System.Collections.Concurrent;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Grid.ModelCore.Structured;

/// <summary>A schema the grammar cannot serve (malformed, or a keyword it does not enforce): a 400 naming <see cref="Keyword"/>.</summary>
public sealed class GrammarException(string message, string? keyword = null) : Exception(message)
{
    public string? Keyword { get; } = keyword;
}

public enum SchemaKind { Any, Object, Array, String, Number, Integer, Boolean, Null, Literals, Union, Ref, Tagged }

/// <summary>One object property: its name, its key as JSON bytes (with the quotes), its value's schema and whether it must appear.</summary>
public sealed record SchemaProperty(string Name, byte[] Key, SchemaNode Schema, bool Required);

/// <summary>
/// One object of a <see cref="SchemaKind.Tagged"/> union: the compact bytes that open it up to and including its tag
/// (<c>{"name":"get_weather"</c>), the object (its first property is the tag), and the fewest bytes after the prefix.
/// </summary>
public sealed record TaggedBranch(byte[] Prefix, SchemaNode Object, int RestBytes);

/// <summary>
/// A JSON schema compiled for byte-level matching. Objects list their properties in schema order (emitted in that order,
/// optional ones may be skipped); an object without properties takes any keys (values: any JSON).
/// </summary>
public sealed class SchemaNode
{
    public SchemaKind Kind { get; init; }
    public SchemaProperty[] Properties { get; set; } = [];
    public bool FreeKeys { get; init; }
    public SchemaNode? Items { get; set; }
    public int MinItems { get; init; }
    public int MaxItems { get; init; } = int.MaxValue;
    public int MinLength { get; init; }
    public int MaxLength { get; init; } = int.MaxValue;
    public byte[][] Literals { get; init; } = [];
    public SchemaNode[] Alternatives { get; set; } = [];
    /// <summary><see cref="SchemaKind.Tagged"/>: objects told apart by the string constant of their common first property.</summary>
    public TaggedBranch[] Branches { get; set; } = [];
    public SchemaNode? Target { get; set; }
    internal string? RefName { get; init; }
    /// <summary>Bytes of the shortest value this schema admits.</summary>
    public int MinBytes { get; internal set; }

    /// <summary>The node behind any chain of $refs.</summary>
    public SchemaNode Resolved
    {
        get
        {
            var n = this;
            for (int i = 0; n.Kind == SchemaKind.Ref && i < 64; i++) n = n.Target!;
            return n;
        }
    }

    public static readonly SchemaNode Any = new() { Kind = SchemaKind.Any, MinBytes = 1 };
}

/// <summary>
/// Compiles a JSON schema (the subset OpenAI's structured outputs use) into a <see cref="SchemaNode"/> tree: type (one or a
/// list), properties, required, additionalProperties, items, minItems/maxItems, minLength/maxLength, enum, const, anyOf
/// (branches must start with different characters, except objects told apart by a string <c>const</c> in their first,
/// required property, such as the tool calls <c>{"name": "f", "arguments": {...}}</c>: each is written compactly up to
/// its tag), $ref into $defs/definitions. Other keywords that constrain values
/// (pattern, format, minimum, ...) are refused with a <see cref="GrammarException"/> naming them: the output would not honour them.
/// </summary>
public static class JsonSchemaGrammar
{
    /// <summary>The schema <c>response_format: json_object</c> stands for: any JSON object.</summary>
    public const string AnyObject = "{\"type\":\"object\"}";

    static readonly HashSet<string> Annotations = ["description", "title", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly", "$defs", "definitions"];
    static readonly HashSet<string> Enforced = ["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "$ref"];
    static readonly JsonSerializerOptions LiteralJson = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static readonly ConcurrentDictionary<(string, bool), SchemaNode> Compiled = new();

    /// <summary>Compiles (memoized by text) <paramref name="schemaJson"/>; <paramref name="strict"/> makes every property required.</summary>
    public static SchemaNode Compile(string schemaJson, bool strict)
    {
        if (Compiled.TryGetValue((schemaJson, strict), out var hit)) return hit;
        JsonDocument doc;
        try { doc = JsonDocument.Parse(schemaJson, new JsonDocumentOptions { MaxDepth = 128 }); }
        catch (JsonException e) { throw new GrammarException($"the schema is not valid JSON: {e.Message}"); }
        using (doc)
        {
            var node = Compile(doc.RootElement, strict);
            if (Compiled.Count > 512) Compiled.Clear();
            Compiled[(schemaJson, strict)] = node;
            return node;
        }
    }

    public static SchemaNode Compile(JsonElement schema, bool strict)
    {
        var compiler = new Compiler(schema, strict);
        var root = compiler.Root = compiler.Node(schema, "#", 0);
        compiler.Finish();
        return root;
    }

    sealed class Compiler(JsonElement root, bool strict)
    {
        readonly List<SchemaNode> _all = new();
        readonly Dictionary<string, SchemaNode> _defs = new();
        readonly List<SchemaNode> _refs = new();

        public SchemaNode? Root;

        SchemaNode Add(SchemaNode n) { _all.Add(n); return n; }

        public SchemaNode Node(JsonElement s, string at, int depth)
        {
            if (depth > 32) throw new GrammarException($"the schema nests deeper than 32 levels at '{at}'");
            if (s.ValueKind == JsonValueKind.True) return Add(new SchemaNode { Kind = SchemaKind.Any });
            if (s.ValueKind != JsonValueKind.Object) throw new GrammarException($"'{at}' must be a schema object, got {s.ValueKind}");
            foreach (var p in s.EnumerateObject())
                if (!Annotations.Contains(p.Name) && !Enforced.Contains(p.Name))
                    throw new GrammarException($"unsupported JSON schema keyword '{p.Name}' at '{at}'", p.Name);
            if (s.TryGetProperty("$ref", out var r))
            {
                var name = r.ValueKind == JsonValueKind.String ? r.GetString()! : throw new GrammarException($"'{at}.$ref' must be a string");
                if (name != "#" && !name.StartsWith("#/$defs/", StringComparison.Ordinal) && !name.StartsWith("#/definitions/", StringComparison.Ordinal))
                    throw new GrammarException($"unsupported $ref '{name}' at '{at}': only '#', '#/$defs/...' and '#/definitions/...'", "$ref");
                var node = Add(new SchemaNode { Kind = SchemaKind.Ref, RefName = name });
                _refs.Add(node);
                return node;
            }
            if (s.TryGetProperty("enum", out var e))
            {
                if (e.ValueKind != JsonValueKind.Array || e.GetArrayLength() == 0) throw new GrammarException($"'{at}.enum' must be a non-empty list", "enum");
                return Add(Literals(e.EnumerateArray().ToArray()));
            }
            if (s.TryGetProperty("const", out var c)) return Add(Literals([c]));
            if (s.TryGetProperty("anyOf", out var any))
            {
                if (any.ValueKind != JsonValueKind.Array || any.GetArrayLength() == 0) throw new GrammarException($"'{at}.anyOf' must be a non-empty list", "anyOf");
                return Add(new SchemaNode { Kind = SchemaKind.Union, Alternatives = any.EnumerateArray().Select((a, i) => Node(a, $"{at}.anyOf[{i}]", depth + 1)).ToArray() });
            }
            string[] types;
            if (s.TryGetProperty("type", out var t))
            {
                if (t.ValueKind == JsonValueKind.String) types = [t.GetString()!];
                else if (t.ValueKind == JsonValueKind.Array && t.GetArrayLength() > 0 && t.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String))
                    types = t.EnumerateArray().Select(x => x.GetString()!).Distinct().ToArray();
                else throw new GrammarException($"'{at}.type' must be a type name or a list of them", "type");
            }
            else if (s.TryGetProperty("properties", out _)) types = ["object"];
            else if (s.TryGetProperty("items", out _)) types = ["array"];
            else return Add(new SchemaNode { Kind = SchemaKind.Any });
            if (types.Length == 1) return Typed(s, types[0], at, depth);
            return Add(new SchemaNode { Kind = SchemaKind.Union, Alternatives = types.Select(x => Typed(s, x, at, depth)).ToArray() });
        }

        SchemaNode Typed(JsonElement s, string type, string at, int depth)
        {
            switch (type)
            {
                case "object":
                {
                    var required = new HashSet<string>();
                    if (s.TryGetProperty("required", out var req))
                    {
                        if (req.ValueKind != JsonValueKind.Array || req.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.String))
                            throw new GrammarException($"'{at}.required' must be a list of property names", "required");
                        foreach (var x in req.EnumerateArray()) required.Add(x.GetString()!);
                    }
                    if (s.TryGetProperty("additionalProperties", out var extra) && extra.ValueKind is not (JsonValueKind.False or JsonValueKind.True))
                        throw new GrammarException($"'{at}.additionalProperties' as a schema is not supported (only true or false)", "additionalProperties");
                    if (!s.TryGetProperty("properties", out var props) || props.ValueKind != JsonValueKind.Object || !props.EnumerateObject().Any())
                    {
                        if (required.Count > 0) throw new GrammarException($"'{at}.required' names properties the schema does not define", "required");
                        return Add(new SchemaNode { Kind = SchemaKind.Object, FreeKeys = true });
                    }
                    var list = new List<SchemaProperty>();
                    foreach (var p in props.EnumerateObject())
                        list.Add(new SchemaProperty(p.Name, JsonSerializer.SerializeToUtf8Bytes(p.Name, LiteralJson),
                            Node(p.Value, $"{at}.properties.{p.Name}", depth + 1), strict || required.Contains(p.Name)));
                    if (required.FirstOrDefault(n => list.All(p => p.Name != n)) is { } missing)
                        throw new GrammarException($"'{at}.required' names '{missing}', which is not in its properties", "required");
                    return Add(new SchemaNode { Kind = SchemaKind.Object, Properties = list.ToArray() });
                }
                case "array":
                {
                    int min = Count(s, "minItems", at) ?? 0, max = Count(s, "maxItems", at) ?? int.MaxValue;
                    if (min > max) throw new GrammarException($"'{at}': minItems {min} is above maxItems {max}", "minItems");
                    var items = s.TryGetProperty("items", out var it) ? Node(it, $"{at}.items", depth + 1) : Add(new SchemaNode { Kind = SchemaKind.Any });
                    return Add(new SchemaNode { Kind = SchemaKind.Array, Items = items, MinItems = min, MaxItems = max });
                }
                case "string":
                {
                    int min = Count(s, "minLength", at) ?? 0, max = Count(s, "maxLength", at) ?? int.MaxValue;
                    if (min > max) throw new GrammarException($"'{at}': minLength {min} is above maxLength {max}", "minLength");
                    return Add(new SchemaNode { Kind = SchemaKind.String, MinLength = min, MaxLength = max });
                }
                case "number": return Add(new SchemaNode { Kind = SchemaKind.Number });
                case "integer": return Add(new SchemaNode { Kind = SchemaKind.Integer });
                case "boolean": return Add(new SchemaNode { Kind = SchemaKind.Boolean });
                case "null": return Add(new SchemaNode { Kind = SchemaKind.Null });
                default: throw new GrammarException($"'{at}.type': unknown type '{type}'", "type");
            }
        }

        static int? Count(JsonElement s, string name, string at)
        {
            if (!s.TryGetProperty(name, out var v)) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var n) || n < 0) throw new GrammarException($"'{at}.{name}' must be a non-negative integer", name);
            return n;
        }

        static SchemaNode Literals(JsonElement[] values) => new()
        {
            Kind = SchemaKind.Literals,
            Literals = values.Select(v => JsonSerializer.SerializeToUtf8Bytes(v, LiteralJson)).DistinctBy(Convert.ToBase64String).ToArray(),
        };

        public void Finish()
        {
            for (int i = 0; i < _refs.Count; i++) _refs[i].Target = Resolve(_refs[i].RefName!);
            foreach (var n in _all.Where(n => n.Kind == SchemaKind.Ref))
            {
                var seen = new HashSet<SchemaNode>();
                for (var x = n; x.Kind == SchemaKind.Ref; x = x.Target!)
                    if (!seen.Add(x)) throw new GrammarException($"'$ref' '{n.RefName}' refers only to itself", "$ref");
            }
            // Shortest values: a fixed point (references may be recursive).
            const int Unreachable = int.MaxValue / 8;
            foreach (var n in _all) n.MinBytes = Unreachable;
            for (int round = 0; round < 200; round++)
            {
                bool changed = false;
                foreach (var n in _all)
                {
                    int m = Shortest(n);
                    if (m < n.MinBytes) { n.MinBytes = m; changed = true; }
                }
                if (!changed) break;
            }
            foreach (var n in _all)
                if (n.MinBytes >= Unreachable) throw new GrammarException("the schema admits no finite value (a required property refers back to itself)", "$ref");
            foreach (var n in _all.Where(n => n.Kind == SchemaKind.Union))
                if (Tag(n.Alternatives.Where(a => a.Resolved.Kind == SchemaKind.Object).ToArray()) is { } tagged)
                    n.Alternatives = [.. n.Alternatives.Where(a => a.Resolved.Kind != SchemaKind.Object), tagged];
            foreach (var n in _all.Where(n => n.Kind == SchemaKind.Union))
            {
                var seen = new bool[256];
                foreach (var alt in n.Alternatives)
                    foreach (var b in FirstBytes(alt))
                        if (seen[b]) throw new GrammarException($"anyOf/type branches that can start with the same character ('{(char)b}') are not supported", "anyOf");
                        else seen[b] = true;
            }
        }

        /// <summary>
        /// Two or more objects whose first property is required, has the same key in all of them and a string constant
        /// (distinct) as its schema: one <see cref="SchemaKind.Tagged"/> node, else null.
        /// </summary>
        static SchemaNode? Tag(SchemaNode[] alternatives)
        {
            if (alternatives.Length < 2) return null;
            var branches = new List<TaggedBranch>();
            var tags = new HashSet<string>();
            byte[]? key = null;
            foreach (var a in alternatives)
            {
                var o = a.Resolved;
                if (o.FreeKeys || o.Properties.Length == 0) return null;
                var first = o.Properties[0];
                var tag = first.Schema.Resolved;
                if (!first.Required || tag.Kind != SchemaKind.Literals || tag.Literals.Length != 1 || tag.Literals[0][0] != (byte)'"') return null;
                if (key is null) key = first.Key;
                else if (!key.AsSpan().SequenceEqual(first.Key)) return null;
                if (!tags.Add(Convert.ToBase64String(tag.Literals[0]))) return null;
                byte[] prefix = [(byte)'{', .. first.Key, (byte)':', .. tag.Literals[0]];
                branches.Add(new TaggedBranch(prefix, o, o.MinBytes - prefix.Length));
            }
            return new SchemaNode { Kind = SchemaKind.Tagged, Branches = branches.ToArray(), MinBytes = branches.Min(b => b.Object.MinBytes) };
        }

        SchemaNode Resolve(string name)
        {
            if (name == "#") return Root!;
            if (_defs.TryGetValue(name, out var hit)) return hit;
            var parts = name[2..].Split('/', 2);
            if (!root.TryGetProperty(parts[0], out var defs) || defs.ValueKind != JsonValueKind.Object || !defs.TryGetProperty(parts[1], out var def))
                throw new GrammarException($"$ref '{name}' does not name a definition in the schema", "$ref");
            // Placeholder first, so a definition that refers to itself resolves to the same node.
            var node = new SchemaNode { Kind = SchemaKind.Ref, RefName = name };
            _all.Add(node);
            _defs[name] = node;
            var body = Node(def, name, 1);
            node.Target = body;
            return node;
        }

        static int Shortest(SchemaNode n)
        {
            long m = n.Kind switch
            {
                SchemaKind.Any => 1,
                SchemaKind.Object => n.FreeKeys ? 2 : 2 + n.Properties.Where(p => p.Required).Sum(p => (long)p.Key.Length + 1 + p.Schema.MinBytes)
                    + Math.Max(0, n.Properties.Count(p => p.Required) - 1),
                SchemaKind.Array => n.MinItems == 0 ? 2 : 2 + (long)n.MinItems * n.Items!.MinBytes + n.MinItems - 1,
                SchemaKind.String => 2L + n.MinLength,
                SchemaKind.Number or SchemaKind.Integer => 1,
                SchemaKind.Boolean => 4,
                SchemaKind.Null => 4,
                SchemaKind.Literals => n.Literals.Min(l => l.Length),
                SchemaKind.Union => n.Alternatives.Min(a => a.MinBytes),
                SchemaKind.Ref => n.Target!.MinBytes,
                _ => 1,
            };
            return (int)Math.Min(m, int.MaxValue / 8);
        }
    }

    /// <summary>Bytes a value of this schema can start with.</summary>
    public static IEnumerable<byte> FirstBytes(SchemaNode node)
    {
        var n = node.Resolved;
        return n.Kind switch
        {
            SchemaKind.Object or SchemaKind.Tagged => "{"u8.ToArray(),
            SchemaKind.Array => "["u8.ToArray(),
            SchemaKind.String => "\""u8.ToArray(),
            SchemaKind.Number or SchemaKind.Integer => "-0123456789"u8.ToArray(),
            SchemaKind.Boolean => "tf"u8.ToArray(),
            SchemaKind.Null => "n"u8.ToArray(),
            SchemaKind.Literals => n.Literals.Select(l => l[0]).Distinct(),
            SchemaKind.Union => n.Alternatives.SelectMany(FirstBytes).Distinct(),
            _ => "{[\"-0123456789tfn"u8.ToArray(),
        };
    }

    /// <summary>Text for error messages.</summary>
    internal static string Show(byte[] bytes) => Encoding.UTF8.GetString(bytes);
}
