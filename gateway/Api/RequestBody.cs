using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;

namespace Grid.Gateway.Api;

/// <summary>Reads a request body as a JSON object, with OpenAI errors for an oversized, empty or malformed body.</summary>
public static class RequestBody
{
    static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = 64, AllowDuplicateProperties = false };

    /// <summary>The body as a JSON object; 413 over <paramref name="maxBytes"/>, 400 when it is not a JSON object.</summary>
    public static async Task<JsonDocument> ReadObjectAsync(HttpRequest request, long maxBytes, CancellationToken cancellationToken)
    {
        CheckContentType(request.ContentType);
        if (request.ContentLength > maxBytes) throw TooLarge(maxBytes);
        JsonDocument doc;
        try
        {
            // Buffer first so that a body cut short by the size limit is told apart from malformed JSON.
            using var buffer = new MemoryStream();
            await request.Body.CopyToAsync(buffer, cancellationToken);
            if (buffer.Length > maxBytes) throw TooLarge(maxBytes);
            if (buffer.Length == 0) throw ApiException.Invalid("the request body is empty; send a JSON object", null, "invalid_json");
            // JSON text is UTF-8 (RFC 8259): a body with invalid bytes is refused whole, before any string is read.
            if (!System.Text.Unicode.Utf8.IsValid(buffer.GetBuffer().AsSpan(0, (int)buffer.Length)))
                throw ApiException.Invalid("the request body is not valid UTF-8", null, "invalid_json");
            buffer.Position = 0;
            doc = await JsonDocument.ParseAsync(buffer, DocumentOptions, cancellationToken);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge) { throw TooLarge(maxBytes); }
        catch (JsonException e)
        {
            throw ApiException.Invalid($"the request body is not valid JSON: {e.Message.Split('\n')[0]}", null, "invalid_json");
        }
        var kind = doc.RootElement.ValueKind;
        if (kind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw ApiException.Invalid($"the request body must be a JSON object, got {JsonFields.Kind(kind)}", null, "invalid_json");
        }
        if (FirstUndecodableString(doc.RootElement, "") is { } path)
        {
            doc.Dispose();
            throw ApiException.Invalid($"the request body has a string that is not valid Unicode (a lone surrogate escape such as \\ud800) at '{path}'",
                path.Length == 0 ? null : path, "invalid_json");
        }
        return doc;
    }

    /// <summary>
    /// JSON may escape a lone surrogate (<c>"\ud800"</c>), which no .NET string can hold: System.Text.Json throws when such
    /// a string is read. Every string and property name is checked once here, so the fields read later never throw.
    /// Returns the path of the first bad one (e.g. <c>messages[0].content</c>), or null.
    /// </summary>
    static string? FirstUndecodableString(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try { e.GetString(); return null; }
                catch (InvalidOperationException) { return path; }
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray())
                    if (FirstUndecodableString(item, $"{path}[{i++}]") is { } bad) return bad;
                return null;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try { name = p.Name; }
                    catch (InvalidOperationException) { return path; }
                    if (FirstUndecodableString(p.Value, path.Length == 0 ? name : $"{path}.{name}") is { } bad) return bad;
                }
                return null;
            default:
                return null;
        }
    }

    /// <summary>
    /// 415 unless the body is declared JSON: <c>application/json</c>, with no charset or <c>charset=utf-8</c> (JSON is
    /// UTF-8, RFC 8259). A form post (curl -d without a header) or text/plain is refused before the body is read.
    /// </summary>
    static void CheckContentType(string? contentType)
    {
        string? problem = null;
        if (string.IsNullOrWhiteSpace(contentType)) problem = "the request has no Content-Type";
        else if (!MediaTypeHeaderValue.TryParse(contentType, out var type)) problem = $"the Content-Type '{contentType}' is malformed";
        else if (!type.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)) problem = $"the Content-Type '{type.MediaType}' is not supported";
        else if (type.Charset.HasValue && !type.Charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase) && !type.Charset.Equals("utf8", StringComparison.OrdinalIgnoreCase))
            problem = $"the charset '{type.Charset}' is not supported";
        if (problem is not null)
            throw new ApiException(StatusCodes.Status415UnsupportedMediaType, $"{problem}; send the body as 'Content-Type: application/json' (UTF-8)", null, "unsupported_media_type");
    }

    static ApiException TooLarge(long maxBytes) =>
        new(StatusCodes.Status413PayloadTooLarge, $"the request body is larger than {maxBytes} bytes", null, "request_too_large");
}
