namespace Grid.Gateway.Api;

/// <summary>Range checks shared by the CLI and the HTTP API.</summary>
public static class Validation
{
    public static (string Message, string Param)? Sampling(double temperature, double topP, int topK, int? logprobs, int maxTokens)
    {
        if (double.IsNaN(temperature) || temperature < 0 || temperature > 2) return ($"temperature must be between 0 and 2, got {temperature}", "temperature");
        if (double.IsNaN(topP) || topP <= 0 || topP > 1) return ($"top_p must be in (0, 1], got {topP}", "top_p");
        if (topK < -1) return ($"top_k must be -1 (off), 0 (off) or positive, got {topK}", "top_k");
        if (logprobs is < 0 or > 20) return ($"logprobs must be between 0 and 20, got {logprobs}", "logprobs");
        if (maxTokens < 1) return ($"max_tokens must be at least 1, got {maxTokens}", "max_tokens");
        return null;
    }
}
