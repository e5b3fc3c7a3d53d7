namespace Grid.ChatTemplates;

/// <summary>
/// One chat turn as exposed to a chat template (<c>message['role']</c>, <c>message.content</c>). An assistant turn that
/// called tools also has <c>message['tool_calls']</c> (OpenAI's shape: <c>id</c>, <c>type</c>, <c>function.name</c>,
/// <c>function.arguments</c> as JSON text) and a <c>tool</c> turn <c>message['tool_call_id']</c>; each key is present only
/// when set, so <c>'tool_calls' in message</c> works as in transformers.
/// </summary>
public sealed record ChatMessage(string Role, string Content, IReadOnlyList<ChatToolCall>? ToolCalls = null, string? ToolCallId = null);

/// <summary>A function call in an assistant turn: its id, the function's name and its arguments (JSON text).</summary>
public sealed record ChatToolCall(string Id, string Name, string Arguments);
