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
    /// <summary>A feature this server does not implement, asked for with a non-neutral value.</summary>
    public static ApiException Unsupported(string what, string param) =>
        new(400, $"{what} is not supported by this server", param, "unsupported_parameter");
}
