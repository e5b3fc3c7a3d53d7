using System.Net;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests.Http;

/// <summary>
/// A server started with two served names (<c>--served-model-name alpha beta</c>), a chat template file that replaces
/// the checkpoint's (<c>--chat-template</c>) and a generation_config.json of its own (<c>--generation-config DIR</c>).
/// </summary>
public sealed class NamedServer : GridServerFixture
{
    /// <summary>
    /// Plain turns as <c>[role] content</c>; tools and tool turns as DeepSeek's later templates write them (the tool list,
    /// assistant calls between DeepSeek's tool-call tokens, tool results naming their call).
    /// </summary>
    public const string Template =
        "{% if tools %}[tools]{% for t in tools %} {{ t['function']['name'] }}{% endfor %}{{ '\\n' }}{% endif %}" +
        "{% for m in messages %}" +
        "{% if m['role'] == 'assistant' and 'tool_calls' in m %}[assistant] <｜tool▁calls▁begin｜>" +
        "{% for c in m['tool_calls'] %}<｜tool▁call▁begin｜>{{ c['type'] }}<｜tool▁sep｜>{{ c['function']['name'] }}\n```json\n{{ c['function']['arguments'] }}\n```<｜tool▁call▁end｜>{% endfor %}" +
        "<｜tool▁calls▁end｜>\n" +
        "{% elif m['role'] == 'tool' %}[tool {{ m['tool_call_id'] }}] {{ m['content'] }}\n" +
        "{% else %}[{{ m['role'] }}] {{ m['content'] }}\n{% endif %}" +
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
    public override string Checkpoint => "lite_f32";
    protected override void Configure(Dictionary<string, string?> settings)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"grid-named-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "template.jinja"), Template);
        // Defaults: greedy with a repetition penalty of 1.3, 3 tokens unless a request says otherwise.
        File.WriteAllText(Path.Combine(dir, "generation_config.json"),
            "{\"temperature\": 0.0, \"repetition_penalty\": 1.3, \"max_new_tokens\": 3, \"do_sample\": true, \"eos_token_id\": 407}");
        settings["Grid:Model:ServedName"] = "alpha beta";
        settings["Grid:Model:ChatTemplate"] = Path.Combine(dir, "template.jinja");
        settings["Grid:Model:GenerationConfig"] = dir;
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HttpNamedCollection : ICollectionFixture<NamedServer>
{
    public const string Name = "http-named";
}

[Collection(HttpNamedCollection.Name)]
public sealed class ServedNamesAndTemplateTests(NamedServer server)
{
    static readonly Expected Long = Golden.Load("lite_f32", "long");

    [Fact]
    public async Task EveryServedNameIsAcceptedAndListedAndTheFirstIsReported()
    {
        var models = await server.GetJsonAsync("/v1/models");
        Assert.Equal(["alpha", "beta"], models["data"]!.AsArray().Select(m => m!["id"]!.GetValue<string>()));
        Assert.Equal("beta", (await server.GetJsonAsync("/v1/models/beta"))["id"]!.GetValue<string>());
        foreach (var name in new[] { "alpha", "beta" })
        {
            var (status, json) = await server.PostJsonAsync("/v1/completions", Json.Obj(("model", name), ("prompt", "Hello"), ("max_tokens", 2)));
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal("alpha", json!["model"]!.GetValue<string>());
        }
        var (missing, error) = await server.PostJsonAsync("/v1/completions", Json.Obj(("model", "lite_f32"), ("prompt", "Hello")));
        Assert.Equal(HttpStatusCode.NotFound, missing);
        Assert.Equal("model_not_found", error!["error"]!["code"]!.GetValue<string>());
        using var gone = await server.Http.GetAsync(server.BaseUrl + "/v1/models/gamma");
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
    }

    [Fact]
    public async Task TheChatTemplateFileReplacesTheCheckpoints()
    {
        var messages = new JsonArray(Json.Obj(("role", "system"), ("content", "Be brief.")), Json.Obj(("role", "user"), ("content", "What is 2+2?")));
        var (status, json) = await server.PostJsonAsync("/tokenize", Json.Obj(("messages", messages.DeepClone())));
        Assert.Equal(HttpStatusCode.OK, status);
        var expected = server.Tokenizer.Encode("[system] Be brief.\n[user] What is 2+2?\n[assistant]", addSpecialTokens: false, parseSpecialTokens: false);
        var ids = json!["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray();
        Assert.Equal(expected, ids);
        Assert.NotEqual(Golden.Load("lite_f32", "chat").PromptIds[0], ids[0]);   // the checkpoint's template starts with BOS; this one does not
        var (chatStatus, chat) = await server.PostJsonAsync("/v1/chat/completions", Json.Obj(("messages", messages), ("max_tokens", 2)));
        Assert.Equal(HttpStatusCode.OK, chatStatus);
        Assert.Equal(ids.Length, chat!["usage"]!["prompt_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task ToolsAndToolTurnsAreRenderedByATemplateThatKnowsThem()
    {
        var tools = JsonNode.Parse("""
            [{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
             {"type":"function","function":{"name":"get_time"}}]
            """)!;
        var messages = JsonNode.Parse("""
            [{"role":"user","content":"Weather in Oslo?"},
             {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
             {"role":"tool","tool_call_id":"call_1","content":"12 degrees"}]
            """)!;
        var (status, json) = await server.PostJsonAsync("/tokenize", Json.Obj(("messages", messages.DeepClone()), ("tools", tools.DeepClone())));
        Assert.Equal(HttpStatusCode.OK, status);
        // The template's own rendering: no default system listing of the functions, no calls as JSON lines in content.
        const string expected = "[tools] get_weather get_time\n[user] Weather in Oslo?\n" +
            "[assistant] <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\":\"Oslo\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>\n" +
            "[tool call_1] 12 degrees\n[assistant]";
        var ids = json!["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray();
        Assert.Equal(server.Tokenizer.Encode(expected, addSpecialTokens: false, parseSpecialTokens: false), ids);
        // A chat request renders the same prompt.
        var (chatStatus, chat) = await server.PostJsonAsync("/v1/chat/completions", Json.Obj(("messages", messages), ("tools", tools), ("max_tokens", 2)));
        Assert.Equal(HttpStatusCode.OK, chatStatus);
        Assert.Equal(ids.Length, chat!["usage"]!["prompt_tokens"]!.GetValue<int>());
    }

    /// <summary>Three functions with different argument shapes (one with its own $defs).</summary>
    static readonly (string Name, string Parameters)[] SeveralTools =
    [
        ("get_weather", """{"type":"object","properties":{"city":{"type":"string","maxLength":16},"unit":{"enum":["celsius","fahrenheit"]},"days":{"type":"integer"}},"required":["city","unit","days"],"additionalProperties":false}"""),
        ("get_time", """{"type":"object","properties":{"zone":{"enum":["UTC","CET","PST"]},"exact":{"type":"boolean"}},"required":["zone","exact"],"additionalProperties":false}"""),
        ("add_items", """{"type":"object","properties":{"items":{"type":"array","items":{"$ref":"#/$defs/item"},"minItems":1,"maxItems":2}},"required":["items"],"additionalProperties":false,"$defs":{"item":{"type":"object","properties":{"sku":{"type":"string","maxLength":6},"qty":{"type":"integer"}},"required":["sku","qty"],"additionalProperties":false}}}"""),
    ];

    /// <summary>
    /// <c>tool_choice: "required"</c> among three functions (this server's template lists tools by name, so the prompt
    /// stays short): for 20 seeds (temperature 1) the call names one of them and its arguments validate against that
    /// function's schema, checked by an independent validator (JsonSchema.Net).
    /// </summary>
    [Fact]
    public async Task RequiredWithSeveralToolsGivesArgumentsOfTheNamedFunctionForTwentySeeds()
    {
        var validators = SeveralTools.ToDictionary(t => t.Name, t => global::Json.Schema.JsonSchema.FromText(t.Parameters));
        var tools = new JsonArray(SeveralTools.Select(t => (JsonNode)new JsonObject
        {
            ["type"] = "function",
            ["function"] = new JsonObject { ["name"] = t.Name, ["parameters"] = JsonNode.Parse(t.Parameters), ["strict"] = true },
        }).ToArray());
        // Twenty documents at once take minutes on a loaded 2-core machine: a client that waits as long as it takes.
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(30) };
        async Task<(HttpStatusCode, JsonNode?)> PostAsync(JsonObject body)
        {
            using var response = await http.SendAsync(server.Post("/v1/chat/completions", body.ToJsonString()));
            return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync()));
        }
        var runs = Enumerable.Range(1, 20).Select(seed => PostAsync(new JsonObject
        {
            ["messages"] = new JsonArray(Json.Obj(("role", "user"), ("content", "Call one of the tools."))),
            ["tools"] = tools.DeepClone(),
            ["tool_choice"] = "required",
            ["seed"] = seed,
            ["temperature"] = 1.0,
            ["max_tokens"] = 120,
        })).ToArray();
        var called = new HashSet<string>();
        foreach (var (status, json) in await Task.WhenAll(runs))
        {
            Assert.Equal(HttpStatusCode.OK, status);
            var choice = json!["choices"]![0]!;
            Assert.Equal("tool_calls", choice["finish_reason"]!.GetValue<string>());
            var call = Assert.Single(choice["message"]!["tool_calls"]!.AsArray())!["function"]!;
            var name = call["name"]!.GetValue<string>();
            var arguments = call["arguments"]!.GetValue<string>();
            Assert.True(validators.TryGetValue(name, out var schema), name);
            using var args = System.Text.Json.JsonDocument.Parse(arguments);
            Assert.True(schema.Evaluate(args.RootElement).IsValid, $"{name}({arguments}) does not validate against its schema");
            called.Add(name);
        }
        // The random model picks among them: more than one function is called over twenty seeds.
        Assert.True(called.Count >= 2, string.Join(", ", called));
    }

    [Fact]
    public async Task GenerationConfigSuppliesDefaultsThatRequestFieldsOverride()
    {
        async Task<JsonNode> CompleteAsync(JsonObject body)
        {
            body["prompt"] = Json.Ids(Long.PromptIds);
            body["return_tokens_as_token_ids"] = true;
            body["logprobs"] = 1;
            var (status, json) = await server.PostJsonAsync("/v1/completions", body);
            Assert.Equal(HttpStatusCode.OK, status);
            return json!["choices"]![0]!;
        }
        // No sampling fields: temperature 0, repetition_penalty 1.3 and max_new_tokens 3 from the file. On the golden
        // "long" prompt the penalty moves the first token from 193 to 455 (see SamplingParameterTests).
        var defaulted = await CompleteAsync(new JsonObject());
        var tokens = defaulted["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId).ToArray();
        Assert.Equal(3, tokens.Length);
        Assert.Equal(455, tokens[0]);
        Assert.Equal(tokens, (await CompleteAsync(new JsonObject()))["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId));   // greedy: reproducible
        // The request's own fields win.
        var overridden = await CompleteAsync(new JsonObject { ["repetition_penalty"] = 1.0, ["max_tokens"] = 2 });
        var ids = overridden["logprobs"]!["tokens"]!.AsArray().Select(Json.TokenId).ToArray();
        Assert.Equal(2, ids.Length);
        Assert.Equal(Long.GeneratedIds[0], ids[0]);
    }
}
