using System.Globalization;
using System.Text;

namespace Grid.ChatTemplates;

/// <summary>
/// Splits a template into text and tag tokens like Jinja's lexer, applying whitespace control
/// (<c>-</c>/<c>+</c> markers, <c>trim_blocks</c>, <c>lstrip_blocks</c>) while doing so.
/// </summary>
internal sealed class ChatTemplateLexer
{
    private static readonly string[] Operators =
    [
        "//", "**", "==", "!=", "<=", ">=",
        "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|",
    ];

    private readonly string _src;
    private readonly bool _trimBlocks;
    private readonly bool _lstripBlocks;
    private readonly List<Token> _tokens = [];
    private int _pos;

    private ChatTemplateLexer(string source, bool trimBlocks, bool lstripBlocks)
    {
        _src = source;
        _trimBlocks = trimBlocks;
        _lstripBlocks = lstripBlocks;
    }

    public static List<Token> Tokenize(string source, bool trimBlocks, bool lstripBlocks)
    {
        var lexer = new ChatTemplateLexer(source, trimBlocks, lstripBlocks);
        lexer.Run();
        return lexer._tokens;
    }

    private void Run()
    {
        bool lineStarting = true;
        while (_pos < _src.Length)
        {
            int start = FindTagStart(_pos);
            if (start < 0)
            {
                Emit(TokenKind.Data, _src[_pos..], _pos);
                break;
            }

            char kind = _src[start + 1];
            int inner = start + 2;
            char sign = inner < _src.Length && _src[inner] is '-' or '+' ? _src[inner] : '\0';
            if (sign != '\0')
            {
                inner++;
            }

            string text = _src[_pos..start];
            if (sign == '-')
            {
                text = PyText.RStrip(text);
            }
            else if (sign != '+' && _lstripBlocks && kind != '{')
            {
                // lstrip_blocks: drop spaces/tabs between the start of the line and a block or comment tag.
                int lineStart = text.LastIndexOf('\n') + 1;
                if ((lineStart > 0 || lineStarting) && PyText.IsAllWhitespace(text, lineStart))
                {
                    text = text[..lineStart];
                }
            }

            if (text.Length > 0)
            {
                Emit(TokenKind.Data, text, _pos);
            }

            _pos = inner;
            lineStarting = kind == '#' ? LexComment(start) : LexTag(kind == '%', start);
        }

        Emit(TokenKind.Eof, string.Empty, _src.Length);
    }

    private int FindTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
        {
            if (_src[i + 1] is '{' or '%' or '#')
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Skips a comment; returns whether the consumed end marker ended with a newline.</summary>
    private bool LexComment(int start)
    {
        int end = _src.IndexOf("#}", _pos, StringComparison.Ordinal);
        if (end < 0)
        {
            throw ChatTemplateException.Syntax(_src, start, "unclosed comment (missing '#}')");
        }

        char sign = end > _pos && _src[end - 1] is '-' or '+' ? _src[end - 1] : '\0';
        _pos = end + 2;
        return AfterTagEnd(sign, blockLike: true);
    }

    /// <summary>Lexes the inside of a <c>{{ }}</c> or <c>{% %}</c> tag; returns whether the end marker ended with a newline.</summary>
    private bool LexTag(bool block, int start)
    {
        Emit(block ? TokenKind.BlockBegin : TokenKind.VariableBegin, block ? "{%" : "{{", start);
        var brackets = new Stack<(char Open, int Position)>();
        while (true)
        {
            while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos]))
            {
                _pos++;
            }

            if (_pos >= _src.Length)
            {
                if (brackets.Count > 0)
                {
                    var (open, position) = brackets.Peek();
                    throw ChatTemplateException.Syntax(_src, position, $"unclosed '{open}'");
                }

                throw ChatTemplateException.Syntax(_src, start, block ? "unclosed block tag (missing '%}')" : "unclosed expression (missing '}}')");
            }

            // Like Jinja, an end marker only closes the tag when no bracket is open (so "{{ {'a': {}} }}" works).
            if (brackets.Count == 0 && TryMatchEnd(block, out char endSign, out int endLength))
            {
                Emit(block ? TokenKind.BlockEnd : TokenKind.VariableEnd, block ? "%}" : "}}", _pos);
                _pos += endLength;
                return AfterTagEnd(endSign, block);
            }

            LexToken(brackets);
        }
    }

    private bool TryMatchEnd(bool block, out char sign, out int length)
    {
        string closer = block ? "%}" : "}}";
        if (At("-" + closer))
        {
            (sign, length) = ('-', 3);
            return true;
        }

        if (block && At("+%}"))
        {
            (sign, length) = ('+', 3);
            return true;
        }

        (sign, length) = ('\0', 2);
        return At(closer);
    }

    private bool AfterTagEnd(char sign, bool blockLike)
    {
        int before = _pos;
        if (sign == '-')
        {
            while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos]))
            {
                _pos++;
            }
        }
        else if (sign != '+' && blockLike && _trimBlocks && _pos < _src.Length && _src[_pos] == '\n')
        {
            _pos++;
        }

        return _pos > before && _src[_pos - 1] == '\n';
    }

    private void LexToken(Stack<(char Open, int Position)> brackets)
    {
        char c = _src[_pos];
        if (char.IsLetter(c) || c == '_')
        {
            int s = _pos;
            while (_pos < _src.Length && (char.IsLetterOrDigit(_src[_pos]) || _src[_pos] == '_'))
            {
                _pos++;
            }

            Emit(TokenKind.Name, _src[s.._pos], s);
            return;
        }

        if (char.IsAsciiDigit(c))
        {
            LexNumber();
            return;
        }

        if (c is '\'' or '"')
        {
            LexString(c);
            return;
        }

        foreach (string op in Operators)
        {
            if (!At(op))
            {
                continue;
            }

            if (op is "(" or "[" or "{")
            {
                brackets.Push((op[0], _pos));
            }
            else if (op is ")" or "]" or "}")
            {
                char expected = op == ")" ? '(' : op == "]" ? '[' : '{';
                if (brackets.Count == 0 || brackets.Peek().Open != expected)
                {
                    throw ChatTemplateException.Syntax(_src, _pos, $"unexpected '{op}'");
                }

                brackets.Pop();
            }

            Emit(TokenKind.Operator, op, _pos);
            _pos += op.Length;
            return;
        }

        throw ChatTemplateException.Syntax(_src, _pos, $"unexpected character '{c}'");
    }

    private void LexNumber()
    {
        int s = _pos;
        ReadDigits();
        bool isFloat = false;
        bool afterDot = s > 0 && _src[s - 1] == '.'; // "x.0" is an item lookup, never a float
        if (!afterDot)
        {
            if (_pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]))
            {
                _pos++;
                ReadDigits();
                isFloat = true;
            }

            if (_pos < _src.Length && _src[_pos] is 'e' or 'E')
            {
                int save = _pos++;
                if (_pos < _src.Length && _src[_pos] is '+' or '-')
                {
                    _pos++;
                }

                if (_pos < _src.Length && char.IsAsciiDigit(_src[_pos]))
                {
                    ReadDigits();
                    isFloat = true;
                }
                else
                {
                    _pos = save;
                }
            }
        }

        string raw = _src[s.._pos];
        string digits = raw.Replace("_", string.Empty, StringComparison.Ordinal);
        if (isFloat)
        {
            Emit(TokenKind.Float, raw, s, double.Parse(digits, NumberStyles.Float, CultureInfo.InvariantCulture));
        }
        else if (long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long value))
        {
            Emit(TokenKind.Integer, raw, s, value);
        }
        else
        {
            throw ChatTemplateException.Syntax(_src, s, $"integer literal '{raw}' is too large");
        }
    }

    private void ReadDigits()
    {
        while (_pos < _src.Length &&
               (char.IsAsciiDigit(_src[_pos]) ||
                (_src[_pos] == '_' && _pos + 1 < _src.Length && char.IsAsciiDigit(_src[_pos + 1]))))
        {
            _pos++;
        }
    }

    private void LexString(char quote)
    {
        int s = _pos;
        var sb = new StringBuilder();
        _pos++;
        while (true)
        {
            if (_pos >= _src.Length)
            {
                throw ChatTemplateException.Syntax(_src, s, "unterminated string literal");
            }

            char c = _src[_pos++];
            if (c == quote)
            {
                break;
            }

            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }

            if (_pos >= _src.Length)
            {
                throw ChatTemplateException.Syntax(_src, s, "unterminated string literal");
            }

            ReadEscape(sb, s);
        }

        Emit(TokenKind.String, sb.ToString(), s);
    }

    /// <summary>Python "unicode-escape" semantics (what Jinja applies to string literals); unknown escapes are kept verbatim.</summary>
    private void ReadEscape(StringBuilder sb, int literalStart)
    {
        char e = _src[_pos++];
        switch (e)
        {
            case '\n': break; // line continuation
            case '\\': sb.Append('\\'); break;
            case '\'': sb.Append('\''); break;
            case '"': sb.Append('"'); break;
            case 'a': sb.Append('\a'); break;
            case 'b': sb.Append('\b'); break;
            case 'f': sb.Append('\f'); break;
            case 'n': sb.Append('\n'); break;
            case 'r': sb.Append('\r'); break;
            case 't': sb.Append('\t'); break;
            case 'v': sb.Append('\v'); break;
            case 'x': sb.Append(ReadHexEscape(2, literalStart)); break;
            case 'u': sb.Append(ReadHexEscape(4, literalStart)); break;
            case 'U': sb.Append(ReadHexEscape(8, literalStart)); break;
            case >= '0' and <= '7':
                int value = e - '0';
                for (int i = 0; i < 2 && _pos < _src.Length && _src[_pos] is >= '0' and <= '7'; i++)
                {
                    value = (value * 8) + (_src[_pos++] - '0');
                }

                sb.Append(char.ConvertFromUtf32(value));
                break;
            default:
                sb.Append('\\').Append(e);
                break;
        }
    }

    private string ReadHexEscape(int length, int literalStart)
    {
        if (_pos + length > _src.Length ||
            !int.TryParse(_src.AsSpan(_pos, length), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int code) ||
            code > 0x10FFFF || code is >= 0xD800 and <= 0xDFFF && length == 8)
        {
            throw ChatTemplateException.Syntax(_src, literalStart, "invalid escape sequence in string literal");
        }

        _pos += length;
        return code is >= 0xD800 and <= 0xDFFF ? ((char)code).ToString() : char.ConvertFromUtf32(code);
    }

    private bool At(string text) => string.CompareOrdinal(_src, _pos, text, 0, text.Length) == 0;

    private void Emit(TokenKind kind, string value, int position, object? number = null) =>
        _tokens.Add(new Token(kind, value, position, number));
}
