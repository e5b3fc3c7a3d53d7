using System.Text.Json;
using Grid.ChatTemplates;
using Xunit;

namespace Grid.Tests;

/// <summary>
/// Tests for the Jinja2-subset chat template engine. Expected strings follow Jinja2 semantics with the
/// Hugging Face environment (trim_blocks=True, lstrip_blocks=True) unless a test says otherwise.
/// </summary>
public sealed class ChatTemplateTests
{
    private const string Bos = "<｜begin▁of▁sentence｜>";
    private const string Eos = "<｜end▁of▁sentence｜>";

    private const string ChatMlTemplate =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}" +
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    private const string Llama3Template =
        "{% set loop_messages = messages %}{% for message in loop_messages %}" +
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}" +
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    private const string Llama2Template =
        """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}""";

    // Multi-line template in the style of Mistral-7B-Instruct-v0.3 (relies on '-' whitespace control).
    private const string MistralTemplate =
        """
        {%- if messages[0]["role"] == "system" %}
            {%- set system_message = messages[0]["content"] %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}

        {{- bos_token }}
        {%- for message in loop_messages %}
            {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
                {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
            {%- endif %}
            {%- if message["role"] == "user" %}
                {%- if loop.last and system_message is defined %}
                    {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
                {%- else %}
                    {{- "[INST] " + message["content"] + "[/INST]" }}
                {%- endif %}
            {%- elif message["role"] == "assistant" %}
                {{- " " + message["content"]|trim + eos_token}}
            {%- else %}
                {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
            {%- endif %}
        {%- endfor %}
        """;

    private static readonly ChatMessage[] MultiTurn =
    [
        new("system", "You are a helpful assistant."),
        new("user", "Hi"),
        new("assistant", "Hello!"),
        new("user", "What is 2+2?"),
    ];

    // ---- DeepSeek-V2-Chat (golden tokenizer_config.json) ----

    [Fact]
    public void DeepSeekV2ChatGoldenTemplate_SingleUserTurn_WithGenerationPrompt()
    {
        var template = ChatTemplate.Parse(LoadGoldenChatTemplate());

        string prompt = template.Render([new ChatMessage("user", "What is the capital of France?")], addGenerationPrompt: true, Bos, Eos);

        Assert.Equal("<｜begin▁of▁sentence｜>User: What is the capital of France?\n\nAssistant:", prompt);
    }

    [Fact]
    public void DeepSeekV2ChatGoldenTemplate_MultiTurnWithSystemAndAssistant()
    {
        var template = ChatTemplate.Parse(LoadGoldenChatTemplate());

        Assert.Equal(
            "<｜begin▁of▁sentence｜>You are a helpful assistant.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: What is 2+2?\n\nAssistant:",
            template.Render(MultiTurn, addGenerationPrompt: true, Bos, Eos));
        Assert.Equal(
            "<｜begin▁of▁sentence｜>You are a helpful assistant.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: What is 2+2?\n\n",
            template.Render(MultiTurn, addGenerationPrompt: false, Bos, Eos));
    }

    [Fact]
    public void DeepSeekV2ChatGoldenTemplate_NoMessages_RendersOnlyBos()
    {
        var template = ChatTemplate.Parse(LoadGoldenChatTemplate());

        Assert.Equal(Bos, template.Render([], addGenerationPrompt: false, Bos, Eos));
    }

    // ---- other common templates ----

    [Fact]
    public void ChatMlTemplate_InsertsDefaultSystemPromptAndGenerationPrompt()
    {
        var template = ChatTemplate.Parse(ChatMlTemplate);

        string withDefaultSystem = template.Render(
            [new("user", "Hi"), new("assistant", "Hello!"), new("user", "Bye")], addGenerationPrompt: true, Bos, Eos);
        string withOwnSystem = template.Render([new("system", "Be brief."), new("user", "Hi")], addGenerationPrompt: false, Bos, Eos);

        Assert.Equal(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
            withDefaultSystem);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n", withOwnSystem);
    }

    [Fact]
    public void Llama3Template_TrimsContentAndPrefixesBosOnce()
    {
        var template = ChatTemplate.Parse(Llama3Template);

        string prompt = template.Render(
            [new("system", "Be brief."), new("user", "  Hi there \n"), new("assistant", "Hello!")], addGenerationPrompt: true, Bos, Eos);

        Assert.Equal(
            "<｜begin▁of▁sentence｜><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            prompt);
    }

    [Fact]
    public void Llama2Template_FoldsSystemPromptIntoFirstUserTurn()
    {
        var template = ChatTemplate.Parse(Llama2Template);

        string prompt = template.Render(
            [new("system", "SYS"), new("user", " Hi "), new("assistant", "Hello"), new("user", "Again")], addGenerationPrompt: false, Bos, Eos);

        Assert.Equal(
            "<｜begin▁of▁sentence｜>[INST] <<SYS>>\nSYS\n<</SYS>>\n\n Hi [/INST] Hello <｜end▁of▁sentence｜><｜begin▁of▁sentence｜>[INST] Again [/INST]",
            prompt);
    }

    [Fact]
    public void MistralStyleMultiLineTemplate_WhitespaceControlRemovesLayout()
    {
        var template = ChatTemplate.Parse(MistralTemplate);

        string prompt = template.Render(
            [new("system", "SYS"), new("user", "Hi"), new("assistant", " Hello "), new("user", "Again")], addGenerationPrompt: false, Bos, Eos);

        Assert.Equal("<｜begin▁of▁sentence｜>[INST] Hi[/INST] Hello<｜end▁of▁sentence｜>[INST] SYS\n\nAgain[/INST]", prompt);
    }

    [Fact]
    public void ExtraVariables_AreVisibleToTheTemplate()
    {
        var template = ChatTemplate.Parse(
            "{% if tools %}{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{% endif %}{{ date_string | default('no date') }}|{{ flag }}");
        var tools = new List<object?>
        {
            new Dictionary<string, object?> { ["name"] = "get_weather", ["parameters"] = new Dictionary<string, object?> { ["city"] = "string" } },
        };
        var extra = new Dictionary<string, object?> { ["tools"] = tools, ["flag"] = 1.5 };

        Assert.Equal(
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"string\"}}\nno date|1.5",
            template.Render([], addGenerationPrompt: false, Bos, Eos, extra));
    }

    [Fact]
    public void ExtraVariables_CannotOverrideStandardVariables()
    {
        var template = ChatTemplate.Parse("{{ messages }}");

        Assert.Throws<ArgumentException>(() => template.Render(
            [], addGenerationPrompt: false, Bos, Eos, new Dictionary<string, object?> { ["messages"] = "x" }));
    }

    // ---- whitespace control ----

    [Fact]
    public void WhitespaceControl_TrimAndLstripBlocksAsInHuggingFace()
    {
        const string source = "<ul>\n  {% for x in items %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n";
        var extra = new Dictionary<string, object?> { ["items"] = new[] { "a", "b" } };

        string huggingFace = ChatTemplate.Parse(source).Render([], false, Bos, Eos, extra);
        string plainJinja = ChatTemplate.Parse(source, trimBlocks: false, lstripBlocks: false).Render([], false, Bos, Eos, extra);

        Assert.Equal("<ul>\n    <li>a</li>\n    <li>b</li>\n</ul>", huggingFace);
        Assert.Equal("<ul>\n  \n    <li>a</li>\n  \n    <li>b</li>\n  \n</ul>", plainJinja);
    }

    [Fact]
    public void WhitespaceControl_MinusAndPlusMarkers()
    {
        const string source = "A  {{- 'b' -}}  \n  C {#- note -#} D\n  {%- if true %}\n    E\n  {%+ endif %}\nF {% if true -%}   G   {%- endif %} H";

        Assert.Equal("AbCD    E\n  F G H", ChatTemplate.Parse(source).Render([], false, Bos, Eos));
        Assert.Equal("AbCD\n    E\n  \nF G H", ChatTemplate.Parse(source, trimBlocks: false, lstripBlocks: false).Render([], false, Bos, Eos));
    }

    [Fact]
    public void Comments_AreRemoved()
    {
        var template = ChatTemplate.Parse("a{# one {{ not rendered }} #}b\n{# two #}\nc");

        Assert.Equal("ab\nc", template.Render([], false, Bos, Eos));
    }

    // ---- loops and scoping ----

    [Fact]
    public void LoopVariables_IndexFirstLastLength()
    {
        var template = ChatTemplate.Parse(
            "{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ loop.index0 }}{{ 'F' if loop.first }}{{ 'L' if loop.last }}{{ m.role[0] }} {% endfor %}");

        Assert.Equal("1/4:0Fs 2/4:1u 3/4:2a 4/4:3Lu ", template.Render(MultiTurn, false, Bos, Eos));
    }

    [Fact]
    public void ForLoop_FilterElseBreakContinue()
    {
        var template = ChatTemplate.Parse(
            "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m['role'] }}{{ ',' if not loop.last }}{% else %}none{% endfor %}" +
            "|{% for x in [] %}x{% else %}empty{% endfor %}" +
            "|{% for x in [1, 2, 3, 4, 5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}");

        Assert.Equal("1user,2assistant,3user|empty|13", template.Render(MultiTurn, false, Bos, Eos));
    }

    [Fact]
    public void SetInsideLoop_DoesNotLeak_ButNamespaceDoes()
    {
        var template = ChatTemplate.Parse(
            "{% set count = 0 %}{% set ns = namespace(count=0, last='') %}{% for m in messages %}" +
            "{% set count = count + 1 %}{% set ns.count = ns.count + 1 %}{% set ns.last = m.role %}{% endfor %}" +
            "{{ count }} {{ ns.count }} {{ ns.last }}");

        Assert.Equal("0 4 user", template.Render(MultiTurn, false, Bos, Eos));
    }

    [Fact]
    public void SetInsideLoop_IsFreshForEachIteration()
    {
        var template = ChatTemplate.Parse(
            "{% set x = 0 %}{% for i in [1, 2, 3] %}{{ x }}{% set x = x + i %}{{ x }};{% endfor %}{{ x }}" +
            "|{% for i in [1, 2] %}{% if i == 1 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}" +
            "|{% if true %}{% set z = 'if-blocks do not scope' %}{% endif %}{{ z }}");

        Assert.Equal("01;02;03;0|[5][]|if-blocks do not scope", template.Render([], false, Bos, Eos));
    }

    // ---- expressions ----

    [Theory]
    [InlineData("{{ 'a' ~ 1 ~ none ~ true }}", "a1NoneTrue")]
    [InlineData("{{ 1 + 2 * 3 }}", "7")]
    [InlineData("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}", "3 -4 2 3.5 1024")]
    [InlineData("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 2.5e-5 }}", "1.0 0.30000000000000004 1e+20 2.5e-05")]
    [InlineData("{{ [1, 'a', none, true, (1,)] }}", "[1, 'a', None, True, (1,)]")]
    [InlineData("{{ {'k': 'v', 'n': 1} }}", "{'k': 'v', 'n': 1}")]
    [InlineData("{{ 'hello'[1:] }} {{ 'hello'[::-1] }} {{ [1, 2, 3, 4][-2:] }} {{ 'hello'[-1] }}", "ello olleh [3, 4] o")]
    [InlineData("{{ '  x  '.strip() }}|{{ '--x--'.lstrip('-') }}|{{ 'x  '.rstrip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('bc') }}", "x|x--|x|True|True")]
    [InlineData("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'Ab'.upper() }}{{ 'Ab'.lower() }}", "['a', 'b', '', 'c'] ['a', 'b'] ABab")]
    [InlineData("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;")]
    [InlineData("{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z', 'dflt') }} {{ {'a': 1}.get('z') }}", "1 dflt None")]
    [InlineData("{{ '  t  ' | trim }}|{{ [1, 2, 3] | length }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ undefined_name | default('d') }}|{{ '' | default('d', true) }}", "t|3|ABC|abc|d|d")]
    [InlineData("{{ {'a': [1, 2.5, none, true], 'ü': 'x\"y'} | tojson }}", "{\"a\": [1, 2.5, null, true], \"ü\": \"x\\\"y\"}")]
    [InlineData("{{ [1, 2] | tojson(indent=2) }}", "[\n  1,\n  2\n]")]
    [InlineData("{{ messages | map(attribute='role') | join(',') }}", "system,user,assistant,user")]
    [InlineData("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}", "2")]
    [InlineData("{{ 1 < 2 < 3 }} {{ 'a' in 'abc' }} {{ 'z' not in ['a'] }} {{ 1 == 1.0 }} {{ '1' == 1 }}", "True True True True False")]
    [InlineData("{{ '' or 'x' }}|{{ 'a' and 'b' }}|{{ not 0 }}|{{ 'y' if false else 'n' }}|{{ 'only' if false }}|", "x|b|True|n||")]
    [InlineData("{{ x is defined }} {{ x is not defined }} {{ none is none }} {{ 'a' is string }} {{ 3 is odd }} {{ 9 is divisibleby 3 }}", "False True True True True True")]
    [InlineData("[{{ x }}]{{ x | length }}{% for i in x %}never{% endfor %}{{ x ~ 'y' }}{{ not x }}", "[]0yTrue")]
    [InlineData("{{ messages[0]['role'] }} {{ messages[0].content }} {{ messages[-1].role }} {{ messages | length }} {{ messages[9] is defined }}", "system S user 4 False")]
    [InlineData("{{ 'a\\tb\\n\\'q\\'' }} {{ \"d\\\"q\" }} {{ '\\u00e9' }}", "a\tb\n'q' d\"q é")]
    [InlineData("{% set t %}x{{ 1 + 1 }}{% endset %}[{{ t }}]", "[x2]")]
    [InlineData("{{ range(3) | list }} {{ dict(a=1) }}", "[0, 1, 2] {'a': 1}")]
    [InlineData("{{ messages[0].missing }}|{{ none }}|{{ true }}", "|None|True")]
    public void Expressions_MatchJinja(string source, string expected)
    {
        ChatMessage[] messages = [new("system", "S"), new("user", "U1"), new("assistant", "A1"), new("user", "U2")];

        Assert.Equal(expected, ChatTemplate.Parse(source).Render(messages, false, Bos, Eos));
    }

    [Fact]
    public void AddGenerationPromptIsDefined_AndDefaultsCanBeOverriddenInTemplate()
    {
        var template = ChatTemplate.Parse(
            "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }}|{{ bos_token ~ eos_token }}");

        Assert.Equal("True|" + Bos + Eos, template.Render([], addGenerationPrompt: true, Bos, Eos));
        Assert.Equal("False|" + Bos + Eos, template.Render([], addGenerationPrompt: false, Bos, Eos));
    }

    // ---- errors ----

    [Fact]
    public void RaiseException_ThrowsWithTemplateMessage()
    {
        var template = ChatTemplate.Parse(Llama2Template);

        var ex = Assert.Throws<ChatTemplateException>(() =>
            template.Render([new("user", "a"), new("user", "b")], addGenerationPrompt: false, Bos, Eos));

        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", ex.Message);
    }

    [Theory]
    [InlineData("{% if x %}no end", 1, 17)]
    [InlineData("{{ x ", 1, 1)]
    [InlineData("{% endfor %}", 1, 4)]
    [InlineData("{% for x in %}{% endfor %}", 1, 13)]
    [InlineData("{{ x | nosuchfilter }}", 1, 8)]
    [InlineData("{{ x is nosuchtest }}", 1, 9)]
    [InlineData("{{ 'unterminated }}", 1, 4)]
    [InlineData("{{ (1 }}", 1, 7)]
    [InlineData("ok\n{% if true %}{% endfor %}", 2, 17)]
    [InlineData("{{ 1 + }}", 1, 8)]
    [InlineData("{% break %}", 1, 4)]
    [InlineData("{% macro m() %}{% endmacro %}", 1, 4)]
    [InlineData("{# never closed", 1, 1)]
    public void SyntaxErrors_ThrowChatTemplateExceptionWithPosition(string source, int line, int column)
    {
        var ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source));

        Assert.Equal(line, ex.Line);
        Assert.Equal(column, ex.Column);
        Assert.StartsWith($"Chat template syntax error at line {line}, column {column}: ", ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
    }

    [Theory]
    [InlineData("{{ x + 1 }}", "'x' is undefined")]
    [InlineData("{{ x.y }}", "'x' is undefined")]
    [InlineData("{{ 'a' + 1 }}", "unsupported operand type(s) for +: 'str' and 'int'")]
    [InlineData("{{ 1 / 0 }}", "division by zero")]
    [InlineData("{% set s = 'str' %}{% set s.a = 1 %}", "cannot assign attribute on non-namespace object")]
    public void RenderErrors_ThrowChatTemplateException(string source, string expectedMessage)
    {
        var template = ChatTemplate.Parse(source);

        var ex = Assert.Throws<ChatTemplateException>(() => template.Render([], false, Bos, Eos));

        Assert.StartsWith("Chat template render error at line 1, column ", ex.Message);
        Assert.EndsWith(expectedMessage, ex.Message);
    }

    // ---- helpers ----

    private static string LoadGoldenChatTemplate()
    {
        string path = Path.Combine(FindSharedGolden(), "lite_f32", "tokenizer_config.json");
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        return document.RootElement.GetProperty("chat_template").GetString()
            ?? throw new InvalidOperationException($"{path} has no chat_template.");
    }

    private static string FindSharedGolden()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "golden");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new DirectoryNotFoundException($"No 'shared/golden' directory above {AppContext.BaseDirectory}.");
    }
}
