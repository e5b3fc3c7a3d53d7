using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>OpenAI's error JSON: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public static class OpenAiErrors
{
    public const string InvalidRequest = "invalid_request_error";
    public const string Authentication = "authentication_error";
    public const string NotFound = "not_found_error";
    public const string Server = "server_error";
    public const string Unavailable = "service_unavailable";
    /// <summary>The 503 code for a part of the model no live silo can serve, from the message that names it.</summary>
    public static string UnavailablePartCode(string message) =>
        message.Contains("expert group", StringComparison.Ordinal) ? "expert_group_unavailable" : "model_part_unavailable";

    /// <summary>OpenAI's type for 429s.</summary>
    public const string RateLimit = "rate_limit_error";

    public static JsonObject Json(ApiException e) => OpenAiJson.Error(e.Message, e.Type, e.Param, e.Code);

    public static Task WriteAsync(HttpContext context, ApiException e, CancellationToken cancellationToken)
    {
        context.Response.StatusCode = e.Status;
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(Json(e).ToJsonString(OpenAiJson.Options), cancellationToken);
    }

    public static IResult Result(ApiException e) =>
        Results.Text(Json(e).ToJsonString(OpenAiJson.Options), "application/json", statusCode: e.Status);

    public static IResult Result(int status, string message, string type, string? param, string? code) =>
        Result(new ApiException(status, message, param, code, type));
}
