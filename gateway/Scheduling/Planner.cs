using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;

namespace Grid.Gateway.Scheduling;

/// <summary>
/// A sequence as the planner sees it. The gateway owns the truth about a sequence: its prompt and the tokens
/// generated so far (<see cref="Tokens"/>); the shard's latent cache is a derived copy of the first
/// <see cref="Computed"/> of them, which can always be rebuilt by prefilling them again (preemption by recompute).
/// </summary>
public class SequenceState(long id, int[] prompt)
{
    /// <summary>
    /// The id its cache has on the shard. A sequence recomputed (preempted, or its cache lost with a silo) gets a new
    /// one, so a late release or step of the old cache can never touch the new one.
    /// </summary>
    public long Id { get; set; } = id;
    public int[] Prompt { get; } = prompt;
    /// <summary>Prompt followed by the generated tokens.</summary>
    public List<int> Tokens { get; } = [.. prompt];
    /// <summary>Leading tokens whose latents are in the shard's cache.</summary>
    public int Computed { get; set; }
    /// <summary>The attention shard holding the cache (-1 while waiting).</summary>
    public int Shard { get; set; } = -1;
    /// <summary>Prompt logprobs requested (echo) and not yet delivered, with this many alternatives.</summary>
    public bool ScorePrompt { get; set; }
    public int ScoreTop { get; init; }

    public int Generated => Tokens.Count - Prompt.Length;
    /// <summary>Known tokens not in the cache yet: 1 for a decoding sequence, more while prefilling or recomputing.</summary>
    public int Remaining => Tokens.Count - Computed;
}

/// <summary>New tokens of one sequence in the planned step: positions [Start, Start + Count).</summary>
public sealed record PlannedChunk(SequenceState Sequence, int Start, int Count, bool Sample, int[]? ScoreNext);

/// <summary>
/// The next step: the chunks to run, the waiting sequences admitted (with their shard), the running ones preempted
/// (their caches are released and they wait to be recomputed), and the waiting ones refused because they can never
/// fit in any shard's latent-cache budget.
/// </summary>
public sealed record StepPlan(
    IReadOnlyList<PlannedChunk> Chunks,
    IReadOnlyList<SequenceState> Admitted,
    IReadOnlyList<SequenceState> Preempted,
    IReadOnlyList<SequenceState> Refused)
{
    public int Tokens => Chunks.Sum(c => c.Count);
}

/// <summary>
/// Decides each step, as vLLM's scheduler does, and does nothing else (the <see cref="EngineLoop"/> executes plans).
/// A pure function of the running sequences (in admission order), the waiting ones (in arrival order), and each
/// attention shard's latent-cache budget:
/// <list type="bullet">
/// <item>decodes first (one token each), then prefill chunks of at most <c>PrefillChunkTokens</c> while the token
/// budget (<c>MaxBatchedTokens</c>) lasts;</item>
/// <item>a chunk that needs cache blocks its shard has not got preempts the most recently admitted sequences on
/// that shard (recompute later), itself last;</item>
/// <item>waiting sequences are admitted in order, up to <c>MaxRunningSequences</c>, onto the shard with the most
/// free blocks, when it has room for their whole known context plus one token; the first that does not fit waits
/// at the head of the queue; one that fits no shard even when empty is refused;</item>
/// <item>cache-aware routing: a waiting sequence whose tokens' prefix (at least one block) is probably cached on some
/// shards goes to the one with the longest such prefix, as long as it has room for it, runs at most
/// max(<see cref="PrefixRoutingMinSlack"/>, a quarter of the least-loaded shard's count) more of this gateway's
/// sequences than the least-loaded shard, and its free share of the budget is within
/// <see cref="PrefixRoutingBandSlack"/> sixteenths of the roomiest shard's; otherwise the rule above.</item>
/// </list>
/// </summary>
public sealed class Planner(SchedulerOptions options)
{
    /// <summary>Cache-aware routing may load the shard holding a prefix with this many more sequences than the least-loaded one (or a quarter more).</summary>
    public const int PrefixRoutingMinSlack = 2;
    /// <summary>Cache-aware routing may pick a shard with this many sixteenths less free budget share than the roomiest.</summary>
    public const int PrefixRoutingBandSlack = 4;

    /// <param name="cachedPrefix">Per waiting sequence, per shard: how many of its tokens the shard's prefix cache
    /// probably holds (the gateway's routing index); null or missing: no preference.</param>
    public StepPlan Plan(IReadOnlyList<SequenceState> running, IReadOnlyList<SequenceState> waiting, IReadOnlyList<ShardBudget> shards,
        IReadOnlyDictionary<SequenceState, int[]>? cachedPrefix = null)
    {
        if (shards.Count == 0) throw new ArgumentException("no attention shards");
        int blockSize = shards[0].BlockSize;
        int Blocks(int tokens) => (tokens + blockSize - 1) / blockSize;
        // Shards on one host share its cache (a pool). A pool's room: its blocks, less those other gateways' (and
        // other shards') sequences hold, less what this gateway's running sequences hold now.
        var poolNames = shards.Select(s => string.IsNullOrEmpty(s.Pool) ? "shard:" + s.Shard : s.Pool).ToArray();
        var pools = poolNames.Distinct().ToArray();
        var poolOf = poolNames.Select(n => Array.IndexOf(pools, n)).ToArray();
        var capacity = new int[pools.Length];
        var free = new int[pools.Length];
        for (int p = 0; p < pools.Length; p++)
        {
            var members = Enumerable.Range(0, shards.Count).Where(i => poolOf[i] == p).ToArray();
            capacity[p] = shards[members[0]].TotalBlocks;
            int others = Math.Max(0, shards[members[0]].UsedBlocks - members.Sum(i => shards[i].OwnBlocks));
            free[p] = capacity[p] - others;
        }
        int Pool(SequenceState s) => poolOf[s.Shard];
        foreach (var s in running) free[Pool(s)] -= Blocks(s.Computed);
        var load = new int[shards.Count];
        foreach (var s in running) load[s.Shard]++;

        int budget = options.MaxBatchedTokens;
        var chunks = new List<PlannedChunk>();
        var preempted = new List<SequenceState>();
        var refused = new List<SequenceState>();
        var order = running.Where(s => s.Remaining == 1).Concat(running.Where(s => s.Remaining > 1)).ToList();

        void Preempt(SequenceState victim)
        {
            preempted.Add(victim);
            free[Pool(victim)] += Blocks(victim.Computed);
            int at = chunks.FindIndex(c => c.Sequence == victim);
            if (at < 0) return;
            free[Pool(victim)] += Blocks(victim.Computed + chunks[at].Count) - Blocks(victim.Computed);
            budget += chunks[at].Count;
            chunks.RemoveAt(at);
        }

        foreach (var seq in order)
        {
            if (preempted.Contains(seq) || refused.Contains(seq)) continue;
            int n;
            if (seq.Remaining == 1) n = 1;
            else if (budget <= 0 && chunks.Count > 0) continue;
            else n = Math.Min(seq.Remaining, Math.Min(options.PrefillChunkTokens, Math.Max(1, budget)));
            int need = Blocks(seq.Computed + n) - Blocks(seq.Computed);
            // Room comes from the sequences admitted after this one in its pool, most recent first.
            var later = running.SkipWhile(v => v != seq).Skip(1).Where(v => Pool(v) == Pool(seq)).ToList();
            while (need > free[Pool(seq)] && later.LastOrDefault(v => !preempted.Contains(v) && !refused.Contains(v)) is { } victim)
                Preempt(victim);
            if (need > free[Pool(seq)])
            {
                if (Blocks(seq.Computed + n) > capacity[Pool(seq)])
                {
                    // It has outgrown the host's whole budget: no preemption can make room.
                    refused.Add(seq);
                    free[Pool(seq)] += Blocks(seq.Computed);
                }
                else Preempt(seq);
                continue;
            }
            free[Pool(seq)] -= need;
            budget -= n;
            chunks.Add(Chunk(seq, n));
        }

        var admitted = new List<SequenceState>();
        int runningCount = running.Count - preempted.Count - refused.Count;
        foreach (var seq in waiting)
        {
            if (runningCount + admitted.Count >= options.MaxRunningSequences) break;
            if (budget <= 0 && chunks.Count > 0) break;
            int want = Blocks(seq.Tokens.Count + 1);
            if (!capacity.Any(c => want <= c)) { refused.Add(seq); continue; }
            // The shard whose host has the most room as a share of its budget, in sixteenths (hosts' budgets differ:
            // raw block counts would send everything to the biggest); among those, the one running fewest of this
            // gateway's sequences, then the most blocks free.
            int shard = Enumerable.Range(0, shards.Count)
                .OrderByDescending(i => RoomBand(free[poolOf[i]], capacity[poolOf[i]]))
                .ThenBy(i => load[i]).ThenByDescending(i => free[poolOf[i]]).ThenBy(i => i).First();
            if (cachedPrefix is not null && cachedPrefix.TryGetValue(seq, out var cached) && cached.Length == shards.Count)
            {
                int minLoad = load.Min();
                int slack = Math.Max(PrefixRoutingMinSlack, minLoad / 4);
                int maxBand = Enumerable.Range(0, shards.Count).Max(i => RoomBand(free[poolOf[i]], capacity[poolOf[i]]));
                int best = Enumerable.Range(0, shards.Count)
                    .Where(i => cached[i] >= blockSize && want <= free[poolOf[i]] && load[i] <= minLoad + slack
                                && RoomBand(free[poolOf[i]], capacity[poolOf[i]]) >= maxBand - PrefixRoutingBandSlack)
                    .OrderByDescending(i => cached[i]).ThenBy(i => load[i]).ThenBy(i => i).DefaultIfEmpty(-1).First();
                if (best >= 0) shard = best;
            }
            if (want > free[poolOf[shard]]) break;
            int n = Math.Min(seq.Remaining, Math.Min(options.PrefillChunkTokens, Math.Max(1, budget)));
            seq.Shard = shard;
            load[shard]++;
            admitted.Add(seq);
            free[poolOf[shard]] -= Blocks(seq.Computed + n) - Blocks(seq.Computed);
            budget -= n;
            chunks.Add(Chunk(seq, n));
        }
        return new StepPlan(chunks, admitted, preempted, refused);
    }

    /// <summary>A pool's free share of its budget in sixteenths (0..16): hosts within one band count as equally roomy.</summary>
    static int RoomBand(int free, int capacity) => capacity <= 0 ? 0 : (int)Math.Clamp(16L * Math.Max(0, free) / capacity, 0, 16);

    /// <summary>
    /// Positions [Computed, Computed + n): sampled when the chunk reaches the end of the known tokens; with prompt
    /// logprobs, row r scores the prompt token after it (the last row of the prompt samples instead).
    /// </summary>
    static PlannedChunk Chunk(SequenceState seq, int n)
    {
        int start = seq.Computed, end = start + n;
        bool sample = end == seq.Tokens.Count;
        int[]? score = null;
        if (seq.ScorePrompt && start < seq.Prompt.Length)
        {
            int rows = Math.Min(end, seq.Prompt.Length - 1) - start;   // rows whose next token is a prompt token
            score = seq.Prompt[(start + 1)..(start + 1 + rows)];
        }
        return new PlannedChunk(seq, start, n, sample, score);
    }

    /// <summary>The executor's form of a planned chunk; the draw of token i of choice c depends only on (seed, c, i).</summary>
    public static StepChunk ToStepChunk(PlannedChunk c, SamplingParams sampling, long seed, int choice) =>
        new(c.Sequence.Id, c.Start, c.Sequence.Tokens.GetRange(c.Start, c.Count).ToArray(), c.Sequence.Shard)
        {
            Sample = c.Sample ? new TokenSampling(sampling, new DrawKey(seed, choice, c.Sequence.Generated)) : null,
            ScoreNext = c.ScoreNext,
            ScoreTop = c.Sequence.ScoreTop,
        };
}
