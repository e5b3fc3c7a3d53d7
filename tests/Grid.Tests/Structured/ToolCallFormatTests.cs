using System.Text.Json.Nodes;
using Grid.ChatTemplates;
using Grid.Gateway.Api;
using Xunit;

namespace Grid.Tests.Structured;

/// <summary>
/// Tool calls in DeepSeek's token form (parsed from the output when the chat template writes calls that way), the
/// default rendering of tool turns for templates that do not, and the call schema of <c>tool_choice: required</c>.
/// </summary>
public sealed class ToolCallFormatTests
{
    static readonly ToolFunction[] Functions =
    [
        new("get_weather", null, """{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}""", true),
        new("get_time", null, """{"type":"object","properties":{}}""", false),
    ];

    static string Call(string name, string args) =>
        $"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>";

    [Fact]
    public void DeepSeekCallsAreParsedWithTheTextBeforeThem()
    {
        var tools = new ToolSet(Functions, ToolMode.Auto, null) { DeepSeekFormat = true };
        var text = "Let me look.<｜tool▁calls▁begin｜>" + Call("get_weather", "{\"city\": \"Oslo\"}") + "\n" + Call("get_time", "{}") + "<｜tool▁calls▁end｜>";
        var parsed = tools.ParseCalls(text)!;
        Assert.Equal("Let me look.", parsed.Content);
        Assert.Equal(["get_weather", "get_time"], parsed.Calls.Select(c => c.Name));
        Assert.Equal("Oslo", JsonNode.Parse(parsed.Calls[0].Arguments)!["city"]!.GetValue<string>());
        Assert.Equal("{}", parsed.Calls[1].Arguments);
        Assert.NotEqual(parsed.Calls[0].Id, parsed.Calls[1].Id);
        // Without a closing token (cut at EOS) the calls still parse; no text before them: no content.
        Assert.Null(tools.ParseCalls("<｜tool▁calls▁begin｜>" + Call("get_time", "{}"))!.Content);
    }

    [Theory]
    [InlineData("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_news\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")]   // not offered
    [InlineData("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"a\":\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")]   // bad JSON
    [InlineData("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n[1]\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")]   // not an object
    [InlineData("<｜tool▁calls▁begin｜>and then some text<｜tool▁calls▁end｜>")]
    [InlineData("It is sunny.")]
    public void NonCallsAreContent(string text)
    {
        var tools = new ToolSet(Functions, ToolMode.Auto, null) { DeepSeekFormat = true };
        Assert.Null(tools.ParseCalls(text));
    }

    [Fact]
    public void JsonCallsStillParseAndTheDeepSeekFormIsIgnoredWithoutItsTemplate()
    {
        var deepSeek = new ToolSet(Functions, ToolMode.Auto, null) { DeepSeekFormat = true };
        Assert.Equal("get_time", deepSeek.ParseCalls("{\"name\":\"get_time\",\"arguments\":{}}")!.Calls.Single().Name);
        var plain = new ToolSet(Functions, ToolMode.Auto, null);
        Assert.Null(plain.ParseCalls("<｜tool▁calls▁begin｜>" + Call("get_time", "{}") + "<｜tool▁calls▁end｜>"));
    }

    [Fact]
    public void DefaultTurnsWriteCallsAsJsonLinesAndResultsAsUserTurns()
    {
        var turns = ToolPrompt.DefaultTurns(
        [
            new ChatMessage("assistant", "", [new ChatToolCall("call_1", "get_weather", "{\"city\":\"Oslo\"}"), new ChatToolCall("call_2", "get_time", "{}")]),
            new ChatMessage("tool", "12 degrees", ToolCallId: "call_1"),
        ]);
        Assert.Equal(new ChatMessage("assistant", "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n{\"name\":\"get_time\",\"arguments\":{}}"), turns[0]);
        Assert.Equal(new ChatMessage("user", "Tool result (call_1): 12 degrees"), turns[1]);
    }

    [Fact]
    public void TheRequiredCallSchemaKeepsEachFunctionsDefinitions()
    {
        ToolFunction[] functions =
        [
            new("tree", null, """{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#"},"maxItems":2}},"required":["v","kids"]}""", true),
            new("pair", null, """{"type":"object","properties":{"a":{"$ref":"#/$defs/n"},"b":{"$ref":"#/definitions/n"}},"required":["a","b"],"$defs":{"n":{"type":"integer"}},"definitions":{"n":{"type":"string"}}}""", true),
        ];
        var grammar = Grid.ModelCore.Structured.JsonSchemaGrammar.Compile(ToolSet.CallSchema(functions), strict: true);
        bool Accepts(string s) => Grid.ModelCore.Structured.GrammarState.Accepts(grammar, System.Text.Encoding.UTF8.GetBytes(s));
        Assert.True(Accepts("{\"name\":\"tree\",\"arguments\":{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[]}]}}"));
        Assert.True(Accepts("{\"name\":\"pair\",\"arguments\":{\"a\":1,\"b\":\"x\"}}"));
        Assert.False(Accepts("{\"name\":\"pair\",\"arguments\":{\"a\":\"x\",\"b\":\"x\"}}"));   // $defs/n is an integer
        Assert.False(Accepts("{\"name\":\"tree\",\"arguments\":{\"a\":1,\"b\":\"x\"}}"));      // tree's arguments are not pair's
    }
}
