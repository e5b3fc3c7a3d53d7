using System.Text.Json;
using Grid.Gateway.Hosting;
using Grid.ModelCore.Serving;
using Grid.ModelCore.Structured;

namespace Grid.Gateway.Api;

/// <summary>
/// A grammar the output must follow: a JSON schema (its text, and whether strict), compiled once here so that a bad
/// schema is a 400 before anything runs. The shard compiles the same text where it samples.
/// </summary>
public sealed record OutputGrammar(string Schema, bool Strict)
{
    /// <summary>The constraint of one sequence: its prompt length, budget and end tokens.</summary>
    public TokenConstraint For(int promptLength, int maxTokens, IEnumerable<int> endTokens) =>
        new(Schema, Strict, promptLength, maxTokens, endTokens.Distinct().ToArray());

    /// <summary>Compiles <paramref name="schema"/>; a schema the grammar cannot serve is a 400 naming the problem.</summary>
    public static OutputGrammar Compile(string schema, bool strict, string param, ServingEngine engine)
    {
        if (engine.Tokenizer?.TokenBytes is null)
            throw ApiException.Unsupported($"{param}: structured output with this model's tokenizer (it needs a byte-level BPE vocabulary)", param);
        try { JsonSchemaGrammar.Compile(schema, strict); }
        catch (GrammarException e) { throw new ApiException(400, $"'{param}': {e.Message}", param, e.Keyword is null ? "invalid_schema" : "unsupported_schema_keyword"); }
        return new OutputGrammar(schema, strict);
    }
}

/// <summary><c>response_format</c>: <c>text</c>, <c>json_object</c> (any JSON object) or <c>json_schema</c>.</summary>
public static class ResponseFormat
{
    public static OutputGrammar? Parse(JsonElement body, ServingEngine engine)
    {
        if (!body.Field("response_format", out var format) || format.ValueKind == JsonValueKind.Null) return null;
        if (format.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("response_format", $"an object, got {JsonFields.Kind(format.ValueKind)}");
        var type = format.OptString("type") ?? throw ApiException.Invalid("'response_format.type' is required", "response_format.type", "missing_required_parameter");
        switch (type)
        {
            case "text": return null;
            case "json_object": return OutputGrammar.Compile(JsonSchemaGrammar.AnyObject, false, "response_format", engine);
            case "json_schema":
            {
                if (!format.Field("json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
                    throw ApiException.Invalid("'response_format.json_schema' is required (an object with 'name' and 'schema')", "response_format.json_schema", "missing_required_parameter");
                var name = js.OptString("name");
                if (string.IsNullOrEmpty(name)) throw ApiException.Invalid("'response_format.json_schema.name' is required", "response_format.json_schema.name", "missing_required_parameter");
                js.OptString("description");
                var strict = js.OptBool("strict") ?? false;
                string schema = JsonSchemaGrammar.AnyObject;
                if (js.Field("schema", out var s) && s.ValueKind != JsonValueKind.Null)
                {
                    if (s.ValueKind != JsonValueKind.Object) throw ApiException.InvalidType("response_format.json_schema.schema", $"an object, got {JsonFields.Kind(s.ValueKind)}");
                    schema = s.GetRawText();
                }
                return OutputGrammar.Compile(schema, strict, "response_format.json_schema.schema", engine);
            }
            default:
                throw ApiException.Invalid($"'response_format.type' must be one of text, json_object, json_schema; got '{type}'", "response_format.type");
        }
    }
}
