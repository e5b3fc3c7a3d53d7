using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Structured;
using Xunit;

namespace Grid.Tests.Structured;

/// <summary>The JSON grammar at the byte level: what it accepts and rejects, and the masks it computes over real vocabularies.</summary>
public sealed class JsonGrammarTests
{
    internal const string PersonSchema = """
    {
      "type": "object",
      "properties": {
        "name": { "type": "string", "maxLength": 12 },
        "age": { "type": "integer" },
        "score": { "type": "number" },
        "active": { "type": "boolean" },
        "role": { "enum": ["admin", "user", "guest"] },
        "tags": { "type": "array", "items": { "type": "string", "maxLength": 6 }, "maxItems": 3 },
        "address": {
          "type": "object",
          "properties": { "city": { "type": "string", "maxLength": 10 }, "zip": { "type": ["string", "null"], "maxLength": 5 } },
          "required": ["city", "zip"],
          "additionalProperties": false
        }
      },
      "required": ["name", "age", "score", "active", "role", "tags", "address"],
      "additionalProperties": false
    }
    """;

    /// <summary>A small schema for the model-driven tests: short documents, every kind of value.</summary>
    internal const string ItemSchema = """
    {
      "type": "object",
      "properties": {
        "id": { "type": "integer" },
        "label": { "type": "string", "maxLength": 6 },
        "kind": { "enum": ["a", "b"] },
        "ok": { "type": "boolean" },
        "dims": { "type": "array", "items": { "type": "number" }, "maxItems": 2 }
      },
      "required": ["id", "label", "kind", "ok", "dims"],
      "additionalProperties": false
    }
    """;

    internal sealed record Item(long id, string label, string kind, bool ok, double[] dims);

    static SchemaNode Any => JsonSchemaGrammar.Compile(JsonSchemaGrammar.AnyObject, false);

    static bool Accepts(SchemaNode root, string text) => GrammarState.Accepts(root, Encoding.UTF8.GetBytes(text));

    [Theory]
    [InlineData("{}")]
    [InlineData("{\"a\":1}")]
    [InlineData("{ \"a\" : [1, -2.5e+3, {\"b\": null}],\n \"c\": \"x\\\"y\\u00e9\\n\", \"d\": true }")]
    [InlineData("{\"caf\u00e9\":\"\u65e5\u672c\ud83d\ude00\"}")]
    [InlineData("{\"a\":0.000001,\"b\":-0,\"c\":123456789012}")]
    public void AnyObjectAcceptsValidJson(string text) => Assert.True(Accepts(Any, text), text);

    [Theory]
    [InlineData("[1]")]                     // json_object: the root is an object
    [InlineData("{\"a\":01}")]              // leading zero
    [InlineData("{\"a\":1,}")]              // trailing comma
    [InlineData("{\"a\":1")]                // unfinished
    [InlineData("{\"a\":\"\\ud800\"}")]     // lone surrogate escape
    [InlineData("{\"a\":\"\\x\"}")]         // bad escape
    [InlineData("{\"a\":\"\u0001\"}")]      // control character
    [InlineData("{\"a\":1234567890123}")]   // 13 integer digits: over the bound
    [InlineData("{\"a\":1.1234567}")]       // 7 fraction digits: over the bound
    [InlineData("{\"a\":tru}")]
    [InlineData("{}{}")]                    // nothing after the document
    [InlineData("{   }")]                   // a whitespace run of 3: over the bound
    public void AnyObjectRejectsInvalidJson(string text) => Assert.False(Accepts(Any, text), text);

    [Fact]
    public void InvalidUtf8IsRejected()
    {
        Assert.False(GrammarState.Accepts(Any, [(byte)'{', (byte)'"', 0xC0, 0x80, (byte)'"', (byte)':', (byte)'1', (byte)'}']));
        Assert.False(GrammarState.Accepts(Any, [(byte)'{', (byte)'"', 0xED, 0xA0, 0x80, (byte)'"', (byte)':', (byte)'1', (byte)'}']));   // UTF-8 surrogate
        Assert.True(GrammarState.Accepts(Any, [(byte)'{', (byte)'"', 0xC3, 0xA9, (byte)'"', (byte)':', (byte)'1', (byte)'}']));
    }

    [Fact]
    public void SchemaFixesKeyOrderTypesAndEnums()
    {
        var person = JsonSchemaGrammar.Compile(PersonSchema, strict: true);
        const string good = "{\"name\":\"Ann\",\"age\":30,\"score\":1.5,\"active\":false,\"role\":\"guest\",\"tags\":[\"a\",\"bb\"],\"address\":{\"city\":\"Oslo\",\"zip\":null}}";
        Assert.True(Accepts(person, good));
        Assert.False(Accepts(person, good.Replace("\"age\":30", "\"age\":30.5")));            // integer
        Assert.False(Accepts(person, good.Replace("\"guest\"", "\"root\"")));                 // enum
        Assert.False(Accepts(person, good.Replace("\"name\":\"Ann\",", "")));                 // required
        Assert.False(Accepts(person, "{\"age\":30," + good[1..].Replace(",\"age\":30", "")));  // order
        Assert.False(Accepts(person, good.Replace("\"Ann\"", "\"Annabelle-Marie\"")));        // maxLength 12
        Assert.False(Accepts(person, good.Replace("[\"a\",\"bb\"]", "[\"a\",\"b\",\"c\",\"d\"]")));   // maxItems 3
        Assert.False(Accepts(person, good.Replace("}}", ",\"extra\":1}}")));                  // no extra keys
        Assert.True(Accepts(person, good.Replace("\"zip\":null", "\"zip\":\"0150\"")));        // a type list
    }

    [Fact]
    public void OptionalPropertiesMaySkipButKeepOrder()
    {
        var schema = JsonSchemaGrammar.Compile("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}},"required":["c"]}""", strict: false);
        Assert.True(Accepts(schema, "{\"c\":1}"));
        Assert.True(Accepts(schema, "{\"a\":1,\"c\":1}"));
        Assert.True(Accepts(schema, "{\"a\":1,\"b\":2,\"c\":3}"));
        Assert.False(Accepts(schema, "{\"b\":1,\"a\":1,\"c\":3}"));
        Assert.False(Accepts(schema, "{\"a\":1}"));
        // Strict: every property is required.
        Assert.False(Accepts(JsonSchemaGrammar.Compile("""{"type":"object","properties":{"a":{"type":"integer"},"c":{"type":"integer"}},"required":["c"]}""", strict: true), "{\"c\":1}"));
    }

    [Fact]
    public void RecursiveDefinitionsAndNumericEnums()
    {
        var tree = JsonSchemaGrammar.Compile("""
            {"$ref":"#/$defs/node","$defs":{"node":{"type":"object","properties":{"v":{"enum":[1,12,"x"]},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v","kids"]}}}
            """, strict: true);
        Assert.True(Accepts(tree, "{\"v\":1,\"kids\":[{\"v\":12,\"kids\":[]},{\"v\":\"x\",\"kids\":[]}]}"));
        Assert.False(Accepts(tree, "{\"v\":2,\"kids\":[]}"));
        Assert.False(Accepts(tree, "{\"v\":123,\"kids\":[]}"));
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a+$"}""", "pattern")]
    [InlineData("""{"type":"string","format":"email"}""", "format")]
    [InlineData("""{"type":"integer","minimum":3}""", "minimum")]
    [InlineData("""{"oneOf":[{"type":"string"}]}""", "oneOf")]
    [InlineData("""{"anyOf":[{"type":"object"},{"type":"object","properties":{"a":{}}}]}""", "anyOf")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"}},"required":["b"]}""", "required")]
    [InlineData("""{"type":"strnig"}""", "type")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "$ref")]
    public void UnsupportedOrBadSchemasAreNamed(string schema, string keyword)
    {
        var e = Assert.Throws<GrammarException>(() => JsonSchemaGrammar.Compile(schema, strict: false));
        Assert.Equal(keyword, e.Keyword);
        Assert.Contains(keyword, e.Message);
    }

    /// <summary>A vocabulary of the 256 single bytes plus EOS (id 256), as the built-in tiny model has.</summary>
    static TokenVocabulary ByteVocabulary() => new(Enumerable.Range(0, 257).Select(i => i < 256 ? new[] { (byte)i } : null).ToArray());

    /// <summary>Samples a document with random logits (a stand-in for a random model) under the mask; returns the text and whether it ended with EOS.</summary>
    static (string Text, bool Ended, int Tokens) Generate(TokenVocabulary vocabulary, SchemaNode grammar, int seed, int maxTokens, int eos, int vocab, Func<int, float>? bias = null)
    {
        var decoder = new ConstrainedDecoder(grammar, vocabulary, maxTokens, [eos]);
        var random = new SplitMix64((ulong)seed);
        var bytes = new List<byte>();
        for (int i = 0; i < maxTokens; i++)
        {
            var logits = new float[vocab];
            for (int t = 0; t < vocab; t++) logits[t] = (float)(random.NextGaussian() * 3) + (bias?.Invoke(t) ?? 0);
            Assert.True(decoder.Mask(logits) > 0);
            var token = Sampler.Sample(logits, new SamplingParams { Temperature = 1 }, new DrawKey(seed, 0, i)).Token;
            if (token == eos) return (Encoding.UTF8.GetString(bytes.ToArray()), true, i + 1);
            bytes.AddRange(vocabulary.Bytes(token)!);
            decoder.Feed(token);
        }
        return (Encoding.UTF8.GetString(bytes.ToArray()), false, maxTokens);
    }

    [Fact]
    public void RandomLogitsAlwaysGiveValidDocumentsWithinTheBudget()
    {
        var vocabulary = ByteVocabulary();
        var person = JsonSchemaGrammar.Compile(PersonSchema, strict: true);
        for (int seed = 1; seed <= 30; seed++)
        {
            var (text, ended, tokens) = Generate(vocabulary, person, seed, 160, 256, 257);
            Assert.True(ended, $"seed {seed}: no EOS within 160 tokens: {text}");
            Assert.True(tokens <= 160);
            var parsed = JsonSerializer.Deserialize<Person>(text)!;
            Assert.Contains(parsed.role, new[] { "admin", "user", "guest" });
            Assert.True(parsed.name.EnumerateRunes().Count() <= 12 && parsed.tags.Length <= 3 && parsed.address.city.EnumerateRunes().Count() <= 10);
        }
        // A model that loves whitespace and digits still ends (bounded runs), and json_object gives an object.
        for (int seed = 1; seed <= 10; seed++)
        {
            var (text, ended, _) = Generate(vocabulary, Any, seed, 64, 256, 257, t => t is ' ' or '\n' or (>= '0' and <= '9') ? 20 : 0);
            Assert.True(ended, $"seed {seed}: {text}");
            Assert.IsType<JsonObject>(JsonNode.Parse(text));
        }
    }

    [Fact]
    public void TightBudgetStillClosesTheDocument()
    {
        var vocabulary = ByteVocabulary();
        var schema = JsonSchemaGrammar.Compile("""{"type":"object","properties":{"s":{"type":"string"},"n":{"type":"array","items":{"type":"number"}}},"required":["s","n"]}""", true);
        // The shortest document {"s":"","n":[]} is 15 bytes: with 16 tokens (15 + EOS) it must come out exactly.
        var (text, ended, tokens) = Generate(vocabulary, schema, 7, 16, 256, 257);
        Assert.True(ended);
        Assert.Equal("{\"s\":\"\",\"n\":[]}", text);
        Assert.Equal(16, tokens);
        // Too few tokens for any document: the output is cut (finish_reason length), never an empty mask.
        var (cut, endedEarly, _) = Generate(vocabulary, schema, 7, 10, 256, 257);
        Assert.False(endedEarly);
        Assert.Equal(10, Encoding.UTF8.GetByteCount(cut));
    }

    [Fact]
    public void GoldenVocabularyMasksMultiByteTokens()
    {
        var vocabulary = TokenVocabulary.ForDirectory(Golden.Dir("lite_f32"));
        Assert.NotNull(vocabulary);
        Assert.Contains(Enumerable.Range(0, vocabulary!.Count), t => vocabulary.Bytes(t) is { Length: > 1 });
        using var tokenizer = Grid.ModelCore.Tokenization.GridTokenizer.Load(Golden.Dir("lite_f32"));
        int eos = tokenizer.EosId!.Value;
        var person = JsonSchemaGrammar.Compile(PersonSchema, strict: true);
        for (int seed = 1; seed <= 10; seed++)
        {
            var (text, ended, _) = Generate(vocabulary, person, seed, 200, eos, vocabulary.Count);
            Assert.True(ended, $"seed {seed}: {text}");
            JsonSerializer.Deserialize<Person>(text);
        }
    }

    [Fact]
    public void ObjectsToldApartByAStringConstantFormOneUnion()
    {
        var calls = JsonSchemaGrammar.Compile("""
            {"anyOf":[
              {"type":"object","properties":{"name":{"const":"f"},"arguments":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}},"required":["name","arguments"]},
              {"type":"object","properties":{"name":{"const":"fg"},"arguments":{"type":"object","properties":{"b":{"type":"string"}},"required":["b"]}},"required":["name","arguments"]},
              {"type":"string"}]}
            """, strict: true);
        Assert.True(Accepts(calls, "{\"name\":\"f\",\"arguments\":{\"a\":1}}"));
        Assert.True(Accepts(calls, "{\"name\":\"fg\", \"arguments\": {\"b\":\"x\"} }"));
        Assert.True(Accepts(calls, "\"just text\""));
        Assert.False(Accepts(calls, "{\"name\":\"f\",\"arguments\":{\"b\":\"x\"}}"));    // f's arguments are {a}
        Assert.False(Accepts(calls, "{\"name\":\"fg\",\"arguments\":{\"a\":1}}"));
        Assert.False(Accepts(calls, "{\"name\":\"h\",\"arguments\":{\"a\":1}}"));       // no such tag
        Assert.False(Accepts(calls, "{\"arguments\":{\"a\":1},\"name\":\"f\"}"));       // the tag comes first
        // Object branches without a distinct string tag first are still refused.
        var e = Assert.Throws<GrammarException>(() => JsonSchemaGrammar.Compile("""
            {"anyOf":[{"type":"object","properties":{"k":{"const":"a"}}},{"type":"object","properties":{"k":{"const":"a"}}}]}
            """, strict: true));
        Assert.Equal("anyOf", e.Keyword);
    }

    internal sealed record Address(string city, string? zip);
    internal sealed record Person(string name, long age, double score, bool active, string role, string[] tags, Address address);
}
