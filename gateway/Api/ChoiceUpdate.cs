using System.Text.Json.Nodes;
using Grid.ModelCore.Sampling;

namespace Grid.Gateway.Api;

/// <summary>What a request's merged stream of choice events carries, in the order the choices produced it.</summary>
public abstract record ChoiceUpdate(ChoiceRun Choice);
/// <summary>Echo: the prompt's text, with its legacy logprobs when asked.</summary>
public sealed record EchoUpdate(ChoiceRun Choice, string Text, JsonObject? Logprobs) : ChoiceUpdate(Choice);
/// <summary>A generated token: the text it completed (may be empty) and its logprobs in the form asked.</summary>
public sealed record TokenUpdate(ChoiceRun Choice, string Delta, SampledToken Token, JsonObject? LegacyLogprobs, JsonObject? ChatLogprobs) : ChoiceUpdate(Choice);
/// <summary>The end of a choice: the text still held back (if any) and its <c>finish_reason</c>.</summary>
public sealed record FinishUpdate(ChoiceRun Choice, string Delta, string Reason) : ChoiceUpdate(Choice);
