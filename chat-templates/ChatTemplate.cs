namespace Grid.ChatTemplates;

/// <summary>
/// A compiled Hugging Face <c>chat_template</c> (the Jinja2 subset used by real chat templates).
/// Parsing and rendering follow transformers' environment: <c>trim_blocks=True</c>, <c>lstrip_blocks=True</c>,
/// loop controls (<c>break</c>/<c>continue</c>), <c>raise_exception</c>, <c>strftime_now</c> and a
/// <c>tojson</c> filter that does not escape non-ASCII characters.
/// </summary>
/// <remarks>
/// Supported: <c>{{ }}</c>, <c>{% if/elif/else %}</c>, <c>{% for x in xs [if cond] %}</c> with <c>loop.*</c> and
/// <c>{% else %}</c>, <c>{% set %}</c> (incl. <c>namespace()</c> attributes and block sets), comments, whitespace
/// control (<c>-</c>/<c>+</c>), Python-style literals and operators, tests (<c>is defined</c>, ...), common filters
/// and str/dict methods. Unsupported constructs (macros, includes, ...) are rejected by <see cref="Parse(string)"/>.
/// A template is immutable once parsed and can be rendered concurrently.
/// </remarks>
public sealed class ChatTemplate
{
    private static readonly string[] ReservedVariables = ["messages", "add_generation_prompt", "bos_token", "eos_token"];

    private readonly string _source;
    private readonly IReadOnlyList<TemplateNode> _body;

    private ChatTemplate(string source, IReadOnlyList<TemplateNode> body)
    {
        _source = source;
        _body = body;
    }

    /// <summary>The template source (newlines normalized to <c>\n</c>, one trailing newline removed, as Jinja does).</summary>
    public string Source => _source;

    /// <summary>
    /// Whether the template reads the variable or message key <paramref name="name"/> (as <c>tools</c> or
    /// <c>tool_calls</c>): the name is a whole word of the source; a template that never mentions it ignores it.
    /// </summary>
    public bool Mentions(string name) =>
        System.Text.RegularExpressions.Regex.IsMatch(_source, @"(?<![A-Za-z0-9_])" + System.Text.RegularExpressions.Regex.Escape(name) + @"(?![A-Za-z0-9_])");

    /// <summary>Parses a chat template with the Hugging Face settings (<c>trim_blocks</c> and <c>lstrip_blocks</c> on).</summary>
    /// <exception cref="ChatTemplateException">The template has a syntax error or uses an unsupported feature.</exception>
    public static ChatTemplate Parse(string template) => Parse(template, trimBlocks: true, lstripBlocks: true);

    /// <summary>Parses a template with explicit Jinja lexer settings (plain Jinja defaults are both <c>false</c>).</summary>
    /// <exception cref="ChatTemplateException">The template has a syntax error or uses an unsupported feature.</exception>
    public static ChatTemplate Parse(string template, bool trimBlocks, bool lstripBlocks)
    {
        ArgumentNullException.ThrowIfNull(template);
        // Jinja normalizes newlines and (keep_trailing_newline=False) drops a single trailing newline.
        string source = template.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        if (source.EndsWith('\n'))
        {
            source = source[..^1];
        }

        var tokens = ChatTemplateLexer.Tokenize(source, trimBlocks, lstripBlocks);
        var body = ChatTemplateParser.Parse(source, tokens);
        return new ChatTemplate(source, body);
    }

    /// <summary>
    /// Renders the template. Variables in scope: <c>messages</c> (list of dicts with 'role' and 'content'),
    /// <c>add_generation_prompt</c>, <c>bos_token</c>, <c>eos_token</c>, plus every entry of <paramref name="extra"/>
    /// (strings, numbers, booleans, null, lists/enumerables, dictionaries, <see cref="ChatMessage"/> and
    /// System.Text.Json elements/nodes are converted to their Python equivalents).
    /// </summary>
    /// <exception cref="ChatTemplateException">Rendering failed (undefined value misuse, type error, <c>raise_exception</c>).</exception>
    /// <exception cref="ArgumentException"><paramref name="extra"/> tries to redefine one of the standard variables.</exception>
    public string Render(
        IReadOnlyList<ChatMessage> messages,
        bool addGenerationPrompt,
        string bosToken,
        string eosToken,
        IReadOnlyDictionary<string, object?>? extra = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var globals = new TemplateScope(parent: null);
        if (extra is not null)
        {
            foreach (var (name, value) in extra)
            {
                if (Array.IndexOf(ReservedVariables, name) >= 0)
                {
                    throw new ArgumentException($"'{name}' is a standard chat template variable and cannot be passed in extra.", nameof(extra));
                }

                globals.Set(name, PyValues.FromClr(value));
            }
        }

        var messageList = new List<object?>(messages.Count);
        foreach (var message in messages)
        {
            messageList.Add(PyValues.FromClr(message));
        }

        globals.Set("messages", messageList);
        globals.Set("add_generation_prompt", addGenerationPrompt);
        globals.Set("bos_token", bosToken);
        globals.Set("eos_token", eosToken);
        return ChatTemplateRenderer.Render(_source, _body, globals);
    }
}
