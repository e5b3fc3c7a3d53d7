namespace Grid.ChatTemplates;

/// <summary>One chat turn as exposed to a chat template (<c>message['role']</c>, <c>message.content</c>).</summary>
public sealed record ChatMessage(string Role, string Content);
