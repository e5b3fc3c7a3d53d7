#pragma warning disable OPENAI001 // ChatCompletionOptions.Seed is marked for evaluation
using System.ClientModel;
using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.ModelCore.Structured;
using Grid.Tests.Http;
using OpenAI;
using OpenAI.Chat;
using Xunit;
using static Grid.Tests.Structured.JsonGrammarTests;

namespace Grid.Tests.Structured;

/// <summary>
/// response_format and tool calls over HTTP, on the random-weight lite_f32 checkpoint served by the grid (an embedded
/// silo): whatever the model prefers, the output parses and validates, and ends with the document.
/// </summary>
[Collection(HttpCollection.Name)]
public sealed class StructuredOutputHttpTests(LiteServer server)
{
    ChatClient Client() =>
        new OpenAIClient(new ApiKeyCredential("x"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1"), NetworkTimeout = TimeSpan.FromMinutes(15) }).GetChatClient(server.ModelName);

    static ChatCompletionOptions SchemaOptions(long seed) => new()
    {
        Temperature = 1,
        Seed = seed,
        MaxOutputTokenCount = 120,
        ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("item", BinaryData.FromString(ItemSchema), jsonSchemaIsStrict: true),
    };

    const string WeatherParameters = """
        {"type":"object","properties":{"city":{"type":"string","maxLength":16},"unit":{"enum":["celsius","fahrenheit"]},"days":{"type":"integer"}},"required":["city","unit","days"],"additionalProperties":false}
        """;

    [Fact]
    public async Task JsonSchemaDeserializesIntoATypedClassForTwentySeeds()
    {
        var client = Client();
        var runs = Enumerable.Range(1, 20).Select(seed => client.CompleteChatAsync([new UserChatMessage("Describe an item as JSON.")], SchemaOptions(seed))).ToArray();
        var completions = await Task.WhenAll(runs);
        var distinct = new HashSet<string>();
        foreach (ChatCompletion completion in completions)
        {
            Assert.Equal(ChatFinishReason.Stop, completion.FinishReason);
            var text = completion.Content[0].Text;
            var item = JsonSerializer.Deserialize<Item>(text)!;
            Assert.Contains(item.kind, new[] { "a", "b" });
            Assert.True(item.dims.Length <= 2);
            Assert.True(item.label.EnumerateRunes().Count() <= 6);
            Assert.True(GrammarState.Accepts(JsonSchemaGrammar.Compile(ItemSchema, true), System.Text.Encoding.UTF8.GetBytes(text)));
            Assert.True(completion.Usage.OutputTokenCount <= 120);
            distinct.Add(text);
        }
        Assert.True(distinct.Count > 10, "different seeds give different documents");
    }

    [Fact]
    public async Task JsonObjectParsesForSeveralSeedsOnChatAndCompletions()
    {
        for (int seed = 1; seed <= 5; seed++)
        {
            var (status, json) = await server.PostJsonAsync("/v1/chat/completions", JsonNode.Parse($$$$$"""
                {"messages":[{"role":"user","content":"JSON please"}],"seed":{{{{{seed}}}}},"max_tokens":96,"response_format":{"type":"json_object"}}
                """)!);
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal("stop", json!["choices"]![0]!["finish_reason"]!.GetValue<string>());
            Assert.IsType<JsonObject>(JsonNode.Parse(json["choices"]![0]!["message"]!["content"]!.GetValue<string>()));

            (status, json) = await server.PostJsonAsync("/v1/completions", JsonNode.Parse($$$$$"""
                {"prompt":"Some JSON:","seed":{{{{{seed}}}}},"max_tokens":96,"response_format":{"type":"json_schema","json_schema":{"name":"list","strict":true,"schema":{"type":"object","properties":{"xs":{"type":"array","items":{"type":"number"},"maxItems":4}},"required":["xs"]}}}}
                """)!);
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal("stop", json!["choices"]![0]!["finish_reason"]!.GetValue<string>());
            var xs = JsonNode.Parse(json["choices"]![0]!["text"]!.GetValue<string>())!["xs"]!.AsArray();
            Assert.True(xs.Count <= 4);
            Assert.All(xs, x => x!.GetValue<double>());
        }
    }

    [Fact]
    public async Task StreamedJsonSchemaParsesAndEndsWithStop()
    {
        var text = "";
        ChatFinishReason? finish = null;
        int chunks = 0;
        await foreach (var update in Client().CompleteChatStreamingAsync([new UserChatMessage("Stream an item.")], SchemaOptions(99)))
        {
            foreach (var part in update.ContentUpdate) { text += part.Text; chunks++; }
            finish ??= update.FinishReason;
        }
        Assert.Equal(ChatFinishReason.Stop, finish);
        Assert.True(chunks > 1);
        JsonSerializer.Deserialize<Item>(text);
    }

    [Fact]
    public async Task TruncationIsReportedAsLength()
    {
        // The shortest document of the person schema is far longer than 8 tokens.
        var options = SchemaOptions(3);
        options.ResponseFormat = ChatResponseFormat.CreateJsonSchemaFormat("person", BinaryData.FromString(PersonSchema), jsonSchemaIsStrict: true);
        options.MaxOutputTokenCount = 8;
        ChatCompletion completion = await Client().CompleteChatAsync([new UserChatMessage("Too short.")], options);
        Assert.Equal(ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(8, completion.Usage.OutputTokenCount);
        Assert.ThrowsAny<JsonException>(() => JsonDocument.Parse(completion.Content[0].Text).Dispose());
    }

    [Fact]
    public async Task NamedToolCallArgumentsValidateAgainstTheSchema()
    {
        var weather = ChatTool.CreateFunctionTool("get_weather", "The weather in a city", BinaryData.FromString(WeatherParameters), functionSchemaIsStrict: true);
        var grammar = JsonSchemaGrammar.Compile(WeatherParameters, true);
        for (int seed = 1; seed <= 5; seed++)
        {
            var options = new ChatCompletionOptions { Seed = seed, MaxOutputTokenCount = 80, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather") };
            options.Tools.Add(weather);
            options.Tools.Add(ChatTool.CreateFunctionTool("get_time", "The time", BinaryData.FromString("""{"type":"object","properties":{}}""")));
            ChatCompletion completion = await Client().CompleteChatAsync([new UserChatMessage("Weather in Oslo?")], options);
            Assert.Equal(ChatFinishReason.ToolCalls, completion.FinishReason);
            var call = Assert.Single(completion.ToolCalls);
            Assert.Equal("get_weather", call.FunctionName);
            Assert.StartsWith("call_", call.Id);
            Assert.True(GrammarState.Accepts(grammar, call.FunctionArguments.ToArray()), call.FunctionArguments.ToString());
            var args = JsonNode.Parse(call.FunctionArguments.ToString())!;
            Assert.Contains(args["unit"]!.GetValue<string>(), new[] { "celsius", "fahrenheit" });
            args["days"]!.GetValue<long>();
        }
    }

    [Fact]
    public async Task RequiredToolChoiceCallsAnOfferedFunction()
    {
        for (int seed = 1; seed <= 3; seed++)
        {
            var options = new ChatCompletionOptions { Seed = seed, MaxOutputTokenCount = 80, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
            options.Tools.Add(ChatTool.CreateFunctionTool("get_weather", null, BinaryData.FromString(WeatherParameters)));
            options.Tools.Add(ChatTool.CreateFunctionTool("get_time", null, BinaryData.FromString("""{"type":"object","properties":{}}""")));
            ChatCompletion completion = await Client().CompleteChatAsync([new UserChatMessage("Call something.")], options);
            Assert.Equal(ChatFinishReason.ToolCalls, completion.FinishReason);
            var call = Assert.Single(completion.ToolCalls);
            Assert.Contains(call.FunctionName, new[] { "get_weather", "get_time" });
            Assert.IsType<JsonObject>(JsonNode.Parse(call.FunctionArguments.ToString()));
        }
        // One function: required is that function, its arguments schema-constrained.
        var single = new ChatCompletionOptions { Seed = 5, MaxOutputTokenCount = 80, ToolChoice = ChatToolChoice.CreateRequiredChoice() };
        single.Tools.Add(ChatTool.CreateFunctionTool("get_weather", null, BinaryData.FromString(WeatherParameters), functionSchemaIsStrict: true));
        ChatCompletion one = await Client().CompleteChatAsync([new UserChatMessage("Weather?")], single);
        Assert.True(GrammarState.Accepts(JsonSchemaGrammar.Compile(WeatherParameters, true), one.ToolCalls[0].FunctionArguments.ToArray()));
    }

    [Fact]
    public async Task StreamedToolCallSendsArgumentDeltas()
    {
        var body = JsonNode.Parse($$$$$"""
            {"messages":[{"role":"user","content":"Weather?"}],"seed":4,"max_tokens":120,"stream":true,
             "tools":[{"type":"function","function":{"name":"get_weather","parameters":{{{{{WeatherParameters}}}}},"strict":true}}],
             "tool_choice":{"type":"function","function":{"name":"get_weather"}}}
            """)!;
        var (chunks, done) = await server.StreamAsync("/v1/chat/completions", body);
        Assert.True(done);
        var deltas = chunks.Select(c => c["choices"]![0]!["delta"]!["tool_calls"]?[0]).Where(d => d is not null).ToList();
        Assert.True(deltas.Count > 1, "the arguments arrive in several deltas");
        Assert.Equal("get_weather", deltas[0]!["function"]!["name"]!.GetValue<string>());
        Assert.StartsWith("call_", deltas[0]!["id"]!.GetValue<string>());
        var args = string.Concat(deltas.Select(d => d!["function"]!["arguments"]?.GetValue<string>() ?? ""));
        Assert.True(GrammarState.Accepts(JsonSchemaGrammar.Compile(WeatherParameters, true), System.Text.Encoding.UTF8.GetBytes(args)), args);
        Assert.Equal("tool_calls", chunks.Select(c => c["choices"]![0]!["finish_reason"]).Last(f => f is not null)!.GetValue<string>());
    }

    [Fact]
    public async Task ToolHistoryAndAutoChoiceAreAccepted()
    {
        var weather = ChatTool.CreateFunctionTool("get_weather", "The weather", BinaryData.FromString(WeatherParameters));
        var options = new ChatCompletionOptions { Seed = 1, MaxOutputTokenCount = 16 };
        options.Tools.Add(weather);
        List<ChatMessage> history =
        [
            new UserChatMessage("Weather in Oslo?"),
            new AssistantChatMessage([ChatToolCall.CreateFunctionToolCall("call_1", "get_weather", BinaryData.FromString("""{"city":"Oslo","unit":"celsius","days":1}"""))]),
            new ToolChatMessage("call_1", "12 degrees"),
        ];
        ChatCompletion completion = await Client().CompleteChatAsync(history, options);
        // auto: a random model rarely calls; whatever it did is reported consistently.
        if (completion.FinishReason == ChatFinishReason.ToolCalls) Assert.Single(completion.ToolCalls);
        else Assert.Empty(completion.ToolCalls);
        Assert.True(completion.Usage.InputTokenCount > 0);
    }

    [Theory]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"s":{"type":"string","pattern":"a+"}}}}}""", "pattern", "unsupported_schema_keyword")]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"n":{"type":"integer","minimum":0}}}}}""", "minimum", "unsupported_schema_keyword")]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"objekt"}}}""", "objekt", "unsupported_schema_keyword")]
    [InlineData("""{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}""", "name", "missing_required_parameter")]
    [InlineData("""{"type":"yaml"}""", "yaml", "invalid_value")]
    public async Task BadSchemasAre400WithTheProblemNamed(string format, string named, string code)
    {
        var (status, json) = await server.PostJsonAsync("/v1/chat/completions", JsonNode.Parse($$$$$"""
            {"messages":[{"role":"user","content":"x"}],"response_format":{{{{{format}}}}}}
            """)!);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_request_error", json!["error"]!["type"]!.GetValue<string>());
        Assert.Equal(code, json["error"]!["code"]!.GetValue<string>());
        Assert.Contains(named, json["error"]!["message"]!.GetValue<string>());

        (status, json) = await server.PostJsonAsync("/v1/chat/completions", JsonNode.Parse("""
            {"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","format":"date"}}}}}]}
            """)!);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("format", json!["error"]!["message"]!.GetValue<string>());
        Assert.Equal("tools[0].function.parameters", json["error"]!["param"]!.GetValue<string>());

        (status, json) = await server.PostJsonAsync("/v1/chat/completions", JsonNode.Parse("""
            {"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}
            """)!);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("tool_choice", json!["error"]!["param"]!.GetValue<string>());
    }
}
