namespace Grid.ModelCore.Sampling;

/// <summary>
/// What changes a sequence's logits before temperature, in vLLM's order and with its definitions:
/// <list type="number">
/// <item>min_tokens: while fewer than <see cref="SamplingParams.MinTokens"/> tokens are generated, the stop tokens
/// (EOS unless ignored, and stop_token_ids) get -inf;</item>
/// <item>logit_bias: the bias is added to its token's logit;</item>
/// <item>repetition_penalty r: every token of the prompt or the output with a positive logit has it divided by r, one
/// with a logit &lt;= 0 multiplied by r;</item>
/// <item>frequency_penalty f and presence_penalty p (OpenAI's definition, over the generated tokens only):
/// <c>logit -= f * count + p * (count &gt; 0)</c>.</item>
/// </list>
/// Everything depends on the logits and the sequence's own tokens alone (its history and how many of them were
/// generated), so a sequence recomputed or preempted gets exactly the same processing.
/// </summary>
public static class LogitProcessing
{
    /// <param name="logits">One row, processed in place (float32, as vLLM does).</param>
    /// <param name="generated">How many tokens the sequence has generated (the draw's index).</param>
    /// <param name="history">The sequence's tokens, prompt then generated; the last <paramref name="generated"/> are the output.</param>
    public static void Apply(Span<float> logits, SamplingParams p, int generated, ReadOnlySpan<int> history)
    {
        int vocab = logits.Length;
        if (generated < p.MinTokens)
            foreach (var id in p.StopTokenIds)
                if ((uint)id < (uint)vocab) logits[id] = float.NegativeInfinity;
        foreach (var (token, bias) in p.LogitBias)
            if ((uint)token < (uint)vocab) logits[token] += bias;
        if (!p.NeedsHistory) return;
        if (history.Length < generated)
            throw new ArgumentException($"the sequence's history holds {history.Length} tokens, fewer than the {generated} it generated");
        var output = history[(history.Length - generated)..];
        if (p.RepetitionPenalty != 1.0)
        {
            float r = (float)p.RepetitionPenalty;
            var seen = new HashSet<int>();
            foreach (var id in history)
            {
                if ((uint)id >= (uint)vocab || !seen.Add(id)) continue;
                logits[id] = logits[id] > 0 ? logits[id] / r : logits[id] * r;
            }
        }
        if (p.FrequencyPenalty != 0 || p.PresencePenalty != 0)
        {
            var counts = new Dictionary<int, int>();
            foreach (var id in output)
                if ((uint)id < (uint)vocab) counts[id] = counts.GetValueOrDefault(id) + 1;
            float f = (float)p.FrequencyPenalty, pp = (float)p.PresencePenalty;
            foreach (var (id, count) in counts)
            {
                logits[id] -= f * count;
                logits[id] -= pp;
            }
        }
    }
}
