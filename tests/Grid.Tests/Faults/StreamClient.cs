using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.Tests.Faults;

/// <summary>One streamed <c>/v1/completions</c> request: token-id prompt, greedy (temperature 0) or seeded, ignore_eos.</summary>
public sealed record CompletionSpec(int[] Prompt, int MaxTokens, double Temperature = 0, long? Seed = null)
{
    public string Label => $"[{string.Join(",", Prompt.Take(6))}{(Prompt.Length > 6 ? ",..." : "")}] t={Temperature.ToString(CultureInfo.InvariantCulture)}{(Seed is { } s ? $" seed={s}" : "")}";

    public JsonObject Body()
    {
        var body = new JsonObject
        {
            ["prompt"] = new JsonArray(Prompt.Select(t => (JsonNode)t).ToArray()),
            ["max_tokens"] = MaxTokens,
            ["temperature"] = Temperature,
            ["ignore_eos"] = true,
            ["stream"] = true,
            // logprobs 0 with token ids: every generated token is its own SSE chunk carrying "token_id:N"
            // (text deltas alone can hold back partial UTF-8 and carry no ids).
            ["logprobs"] = 0,
            ["return_tokens_as_token_ids"] = true,
        };
        if (Seed is { } seed) body["seed"] = seed;
        return body;
    }
}

/// <summary>What a streamed completion produced: HTTP status, token ids with arrival times, how it ended.</summary>
public sealed record StreamResult(
    CompletionSpec Spec,
    int Status,
    int[] Tokens,
    double[] ArrivalMs,
    string? FinishReason,
    bool SawDone,
    string? ErrorCode,
    string? ErrorMessage,
    string? Failure,
    bool TimedOut,
    double ElapsedMs)
{
    /// <summary>A complete, well-formed stream: 200, every token, <c>finish_reason: "length"</c>, <c>[DONE]</c>, no error.</summary>
    public bool Complete => Status == 200 && FinishReason == "length" && SawDone && ErrorCode is null && Failure is null && Tokens.Length == Spec.MaxTokens;

    /// <summary>Longest gap between two consecutive tokens (ms); 0 with fewer than two tokens.</summary>
    public double LongestGapMs
    {
        get
        {
            double max = 0;
            for (int i = 1; i < ArrivalMs.Length; i++) max = Math.Max(max, ArrivalMs[i] - ArrivalMs[i - 1]);
            return max;
        }
    }

    /// <summary>How it ended, in one line (for assertion messages).</summary>
    public string Describe() =>
        $"{Spec.Label}: HTTP {Status}, {Tokens.Length}/{Spec.MaxTokens} tokens, finish {FinishReason ?? "none"}, [DONE] {SawDone}" +
        (ErrorCode is not null || ErrorMessage is not null ? $", error {ErrorCode}: {ErrorMessage}" : "") +
        (Failure is not null ? $", failure {Failure}" : "") + (TimedOut ? ", TIMED OUT" : "") + $", {ElapsedMs:F0} ms";
}

/// <summary>
/// A streamed completion in flight: <see cref="TokenCount"/> grows as tokens arrive (so a test can wait for the state
/// "every stream has N tokens"), <see cref="Completion"/> ends with the <see cref="StreamResult"/>. Never throws for
/// what the server does (an HTTP error, an error event, a dropped connection, a stream that stops moving): those are
/// recorded in the result. <paramref name="limit"/> bounds the whole stream so a hang ends as <c>TimedOut</c>.
/// </summary>
public sealed class CompletionStream
{
    public static readonly TimeSpan DefaultLimit = TimeSpan.FromMinutes(4);

    int _tokens;

    CompletionStream(CompletionSpec spec) => Spec = spec;

    public CompletionSpec Spec { get; }
    public int TokenCount => Volatile.Read(ref _tokens);
    public Task<StreamResult> Completion { get; private set; } = null!;
    public bool IsFinished => Completion.IsCompleted;

    public static CompletionStream Start(HttpClient http, CompletionSpec spec, TimeSpan? limit = null, CancellationToken cancellationToken = default)
    {
        var stream = new CompletionStream(spec);
        stream.Completion = Task.Run(() => stream.RunAsync(http, limit ?? DefaultLimit, cancellationToken));
        return stream;
    }

    async Task<StreamResult> RunAsync(HttpClient http, TimeSpan limit, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        var tokens = new List<int>();
        var arrivals = new List<double>();
        int status = 0;
        string? finish = null, errorCode = null, errorMessage = null, failure = null;
        bool done = false, timedOut = false;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(limit);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent(Spec.Body().ToJsonString(), Encoding.UTF8, "application/json"),
            };
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            status = (int)response.StatusCode;
            if (status != 200)
            {
                var text = await response.Content.ReadAsStringAsync(timeout.Token);
                (errorCode, errorMessage) = ReadError(text);
                errorMessage ??= text;
            }
            else
            {
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(timeout.Token));
                while (await reader.ReadLineAsync(timeout.Token) is { } line)
                {
                    if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                    var data = line["data: ".Length..];
                    if (data == "[DONE]") { done = true; break; }
                    var now = clock.Elapsed.TotalMilliseconds;
                    var chunk = JsonNode.Parse(data)!;
                    if (chunk["error"] is not null)
                    {
                        (errorCode, errorMessage) = ReadError(data);
                        continue;
                    }
                    if (chunk["choices"] is not JsonArray { Count: > 0 } choices) continue;   // the usage chunk
                    var choice = choices[0]!;
                    if (choice["logprobs"]?["tokens"] is JsonArray ids)
                        foreach (var id in ids)
                        {
                            tokens.Add(TokenId(id!.GetValue<string>()));
                            arrivals.Add(now);
                            Interlocked.Increment(ref _tokens);
                        }
                    if (choice["finish_reason"] is JsonValue reason && reason.GetValueKind() == JsonValueKind.String) finish = reason.GetValue<string>();
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            timedOut = true;
            failure = $"no end within {limit.TotalSeconds:F0} s";
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException)
        {
            failure = $"{e.GetType().Name}: {e.Message}";
        }
        return new StreamResult(Spec, status, tokens.ToArray(), arrivals.ToArray(), finish, done, errorCode, errorMessage, failure, timedOut, clock.Elapsed.TotalMilliseconds);
    }

    /// <summary>"token_id:N" (return_tokens_as_token_ids) to N.</summary>
    static int TokenId(string token) =>
        token.StartsWith("token_id:", StringComparison.Ordinal)
            ? int.Parse(token["token_id:".Length..], CultureInfo.InvariantCulture)
            : throw new JsonException($"token '{token}' is not rendered as token_id:N");

    static (string? Code, string? Message) ReadError(string json)
    {
        try
        {
            var error = JsonNode.Parse(json)?["error"];
            return (error?["code"]?.GetValue<string>(), error?["message"]?.GetValue<string>());
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException) { return (null, null); }
    }
}

/// <summary>Helpers over <see cref="CompletionStream"/>: one at a time, many at once, waiting for a state, gap statistics.</summary>
public static class StreamClient
{
    /// <summary>One stream to its end.</summary>
    public static Task<StreamResult> RunAsync(HttpClient http, CompletionSpec spec, TimeSpan? limit = null) =>
        CompletionStream.Start(http, spec, limit).Completion;

    /// <summary>Each spec alone, one after another (the reference a faulted run must reproduce).</summary>
    public static async Task<StreamResult[]> SoloAsync(HttpClient http, IEnumerable<CompletionSpec> specs, TimeSpan? limit = null)
    {
        var results = new List<StreamResult>();
        foreach (var spec in specs) results.Add(await RunAsync(http, spec, limit));
        return results.ToArray();
    }

    public static CompletionStream[] StartAll(HttpClient http, IEnumerable<CompletionSpec> specs, TimeSpan? limit = null) =>
        specs.Select(s => CompletionStream.Start(http, s, limit)).ToArray();

    /// <summary>
    /// Waits for the state "every stream has at least <paramref name="tokens"/> tokens"; fails when a stream ended
    /// before (it cannot get there any more) or the limit passes.
    /// </summary>
    public static async Task WaitAllTokensAsync(IReadOnlyList<CompletionStream> streams, int tokens, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        while (streams.Any(s => s.TokenCount < tokens))
        {
            var ended = streams.FirstOrDefault(s => s.TokenCount < tokens && s.IsFinished);
            if (ended is not null)
                throw new InvalidOperationException($"a stream ended before {tokens} tokens: {(await ended.Completion).Describe()}");
            if (clock.Elapsed > limit)
                throw new TimeoutException($"streams not all at {tokens} tokens within {limit.TotalSeconds:F0} s: counts {string.Join(",", streams.Select(s => s.TokenCount))}");
            await Task.Delay(20);
        }
    }

    /// <summary>The p-th percentile (nearest rank on the sorted values); NaN for none.</summary>
    public static double Percentile(IEnumerable<double> values, double p)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        if (sorted.Length == 0) return double.NaN;
        int rank = (int)Math.Ceiling(p / 100 * sorted.Length) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Length - 1)];
    }

    /// <summary>Distinct token-id prompts for the fault tests (no BOS/EOS, within any vocabulary of 400+ ids).</summary>
    public static int[][] DistinctPrompts(int count, int length = 8)
    {
        var prompts = new int[count][];
        for (int i = 0; i < count; i++)
            prompts[i] = Enumerable.Range(0, length).Select(j => 3 + (i * 53 + j * 29 + (i * j) % 7) % 397).ToArray();
        return prompts;
    }

    /// <summary>
    /// Compares faulted results with their solo references: which ones differ (not complete, or other tokens), and
    /// where. Empty when every stream reproduced its solo run exactly.
    /// </summary>
    public static List<string> Mismatches(IReadOnlyList<StreamResult> solo, IReadOnlyList<StreamResult> runs)
    {
        var problems = new List<string>();
        for (int i = 0; i < runs.Count; i++)
        {
            var r = runs[i];
            if (!r.Complete) { problems.Add($"#{i} incomplete: {r.Describe()}"); continue; }
            if (!r.Tokens.SequenceEqual(solo[i].Tokens))
            {
                int at = Enumerable.Range(0, Math.Min(r.Tokens.Length, solo[i].Tokens.Length)).FirstOrDefault(k => r.Tokens[k] != solo[i].Tokens[k]);
                problems.Add($"#{i} {r.Spec.Label}: tokens differ from the solo run from token {at} ({r.Tokens[at]} vs {solo[i].Tokens[at]})");
            }
        }
        return problems;
    }
}
