using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace Grid.Gateway.Api;

/// <summary>A request the API refuses, answered with OpenAI's error JSON and a 4xx/5xx status.</summary>
public sealed class ApiException(int status, string message, string? param = null, string? code = null, string type = OpenAiErrors.InvalidRequest)
    : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public string Type { get; } = type;

    public static ApiException Invalid(string message, string? param, string code = "invalid_value") => new(400, message, param, code);
    public static ApiException InvalidType(string param, string expected) =>
        new(400, $"'{param}' must be {expected}", param, "invalid_type");
    public static ApiException OutOfRange(string message, string param) => new(400, message, param, "out_of_range");
}

/// <summary>OpenAI's error JSON: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public static class OpenAiErrors
{
    public const string InvalidRequest = "invalid_request_error";
    public const string Authentication = "authentication_error";
    public const string NotFound = "not_found_error";
    public const string Server = "server_error";
    public const string Unavailable = "service_unavailable";

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
