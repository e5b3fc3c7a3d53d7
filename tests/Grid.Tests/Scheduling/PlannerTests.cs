using Grid.Configuration;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Serving;
using Xunit;

namespace Grid.Tests.Scheduling;

/// <summary>The planner alone: a pure function of running and waiting sequences and the shards' block budgets.</summary>
public sealed class PlannerTests
{
    static SequenceState Seq(long id, int promptLength, int computed = 0, int shard = -1, int generated = 0)
    {
        var s = new SequenceState(id, Enumerable.Range(100 + (int)id * 1000, promptLength).ToArray()) { Computed = computed, Shard = shard };
        for (int i = 0; i < generated; i++) s.Tokens.Add(7);
        return s;
    }

    static ShardBudget[] Shards(int blockSize, params int[] totalBlocks) =>
        totalBlocks.Select((t, i) => new ShardBudget(i, blockSize, t, 0)).ToArray();

    static Planner Planner(int maxRunning = 64, int maxBatched = 512, int chunk = 256) =>
        new(new SchedulerOptions { MaxRunningSequences = maxRunning, MaxBatchedTokens = maxBatched, PrefillChunkTokens = chunk });

    [Fact]
    public void HostsWithDifferentBudgetsShareNewSequencesByLoadWhileBothHaveRoom()
    {
        // Budgets from host memory differ between hosts; raw block counts would send every sequence to the bigger one.
        var shards = new[] { new ShardBudget(0, 16, 1_000_000, 0) { Pool = "big" }, new ShardBudget(1, 16, 900_000, 0) { Pool = "small" } };
        var waiting = Enumerable.Range(1, 6).Select(i => Seq(i, 10)).ToArray();
        var plan = Planner().Plan([], waiting, shards);
        Assert.Equal(6, plan.Admitted.Count);
        Assert.Equal(3, waiting.Count(s => s.Shard == 0));
        Assert.Equal(3, waiting.Count(s => s.Shard == 1));

        // A host clearly fuller (in sixteenths of its budget) gets nothing while another has more room.
        var tight = new[] { new ShardBudget(0, 16, 100, 60) { Pool = "a" }, new ShardBudget(1, 16, 100, 0) { Pool = "b" } };
        var more = Enumerable.Range(1, 4).Select(i => Seq(i, 10)).ToArray();
        Planner().Plan([], more, tight);
        Assert.All(more, s => Assert.Equal(1, s.Shard));
    }

    [Fact]
    public void DecodesComeFirstThenPrefillChunksWithinTheTokenBudget()
    {
        // Two decoding sequences (prompt done, one generated token pending) and two half-prefilled ones.
        var d1 = Seq(1, 6, computed: 6, shard: 0, generated: 1);
        var p1 = Seq(2, 20, computed: 0, shard: 0);
        var d2 = Seq(3, 6, computed: 6, shard: 0, generated: 1);
        var p2 = Seq(4, 20, computed: 0, shard: 0);
        var plan = Planner(maxBatched: 8, chunk: 5).Plan([d1, p1, d2, p2], [], Shards(4, 100));
        Assert.Equal([1L, 3, 2, 4], plan.Chunks.Select(c => c.Sequence.Id));
        Assert.Equal([1, 1, 5, 1], plan.Chunks.Select(c => c.Count));
        Assert.Equal(8, plan.Tokens);
        Assert.Equal([true, true, false, false], plan.Chunks.Select(c => c.Sample));
        Assert.Equal(6, plan.Chunks[0].Start);
    }

    [Fact]
    public void LongPromptsArePrefilledInOrderedChunksAndOnlyTheLastSamples()
    {
        var planner = Planner(chunk: 5);
        var s = Seq(1, 12);
        var plan = planner.Plan([], [s], Shards(4, 100));
        Assert.Equal([s], plan.Admitted);
        var starts = new List<(int Start, int Count, bool Sample)>();
        var running = new List<SequenceState> { s };
        s.Shard = 0;
        while (true)
        {
            var c = plan.Chunks.Single();
            starts.Add((c.Start, c.Count, c.Sample));
            s.Computed += c.Count;
            if (c.Sample) break;
            plan = planner.Plan(running, [], Shards(4, 100));
        }
        Assert.Equal([(0, 5, false), (5, 5, false), (10, 2, true)], starts);
    }

    [Fact]
    public void PromptLogprobRowsScoreTheNextPromptTokenAndTheLastRowSamples()
    {
        var planner = Planner(chunk: 3);
        var s = Seq(1, 7);
        s.ScorePrompt = true;
        var prompt = s.Prompt;
        var plan = planner.Plan([], [s], Shards(4, 100));
        var rows = new List<int[]>();
        var running = new List<SequenceState> { s };
        while (true)
        {
            var c = plan.Chunks.Single();
            rows.Add(c.ScoreNext!);
            s.Computed += c.Count;
            if (c.Sample) break;
            plan = planner.Plan(running, [], Shards(4, 100));
        }
        // Row r of a chunk scores the prompt token after it: chunks [0,3) [3,6) [6,7); the last prompt row samples.
        Assert.Equal(prompt[1..4], rows[0]);
        Assert.Equal(prompt[4..7], rows[1]);
        Assert.Empty(rows[2]);
        // Without prompt logprobs no row is scored.
        Assert.Null(Planner().Plan([], [Seq(2, 7)], Shards(4, 100)).Chunks.Single().ScoreNext);
    }

    [Fact]
    public void AdmissionStopsWhenTheShardRunsOutOfBlocks()
    {
        // Blocks of 4 tokens, 10 per shard. Each 15-token prompt needs 4 blocks (with room for its first token).
        var waiting = new[] { Seq(1, 15), Seq(2, 15), Seq(3, 15) };
        var plan = Planner().Plan([], waiting, Shards(4, 10));
        Assert.Equal([1L, 2], plan.Admitted.Select(s => s.Id));
        Assert.Equal([1L, 2], plan.Chunks.Select(c => c.Sequence.Id));
        Assert.Empty(plan.Refused);
        // Once the first leaves (cancelled or finished), its blocks admit the third.
        var two = waiting[1];
        two.Computed = 15;
        plan = Planner().Plan([two], [waiting[2]], Shards(4, 10));
        Assert.Equal([3L], plan.Admitted.Select(s => s.Id));
    }

    [Fact]
    public void AdmissionIsFirstComeFirstServedAndBoundedByMaxRunning()
    {
        // A running sequence holds 3 of 12 blocks: the 40-token prompt (11 blocks) must wait, and the short one
        // behind it waits too rather than overtake it.
        var running = Seq(9, 8, computed: 8, shard: 0, generated: 1);
        var plan = Planner().Plan([running], [Seq(1, 40), Seq(2, 3)], Shards(4, 12));
        Assert.Empty(plan.Admitted);
        Assert.Equal([9L], plan.Chunks.Select(c => c.Sequence.Id));
        plan = Planner(maxRunning: 2).Plan([], [Seq(4, 3), Seq(5, 3), Seq(6, 3)], Shards(4, 12));
        Assert.Equal([4L, 5], plan.Admitted.Select(s => s.Id));
    }

    [Fact]
    public void AdmissionPlacesOnTheShardWithTheMostFreeBlocks()
    {
        var busy = Seq(1, 30, computed: 30, shard: 0, generated: 1);
        var plan = Planner().Plan([busy], [Seq(2, 5), Seq(3, 5)], Shards(4, 20, 20));
        Assert.Equal([1, 1], plan.Admitted.Select(s => s.Shard));   // shard 1 has more room than shard 0, and still after the first
    }

    [Fact]
    public void ADecodeThatNeedsABlockPreemptsTheMostRecentlyAdmittedSequence()
    {
        // 4 blocks of 4 tokens; each sequence holds 8 tokens (2 blocks) and its next token needs a third block.
        var a = Seq(1, 8, computed: 8, shard: 0, generated: 1);
        var b = Seq(2, 8, computed: 8, shard: 0, generated: 1);
        var plan = Planner().Plan([a, b], [], Shards(4, 4));
        Assert.Equal([b], plan.Preempted);
        Assert.Equal([a], plan.Chunks.Select(c => c.Sequence));
    }

    [Fact]
    public void ASequenceWithNoLaterOneToPreemptPreemptsItselfAndOneThatOutgrewTheShardIsRefused()
    {
        // a was admitted first and holds 3 blocks; b (later) needs a new block: b yields, a is untouched.
        var a = Seq(1, 12, computed: 12, shard: 0);
        var b = Seq(2, 4, computed: 4, shard: 0, generated: 1);
        var plan = Planner().Plan([a, b], [], Shards(4, 4));
        Assert.Equal([b], plan.Preempted);
        // A prompt that cannot fit an empty shard is refused at once, not queued forever.
        plan = Planner().Plan([], [Seq(3, 20)], Shards(4, 4));
        Assert.Equal([3L], plan.Refused.Select(s => s.Id));
        Assert.Empty(plan.Chunks);
    }

    [Fact]
    public void RecomputeAfterPreemptionPrefillsPromptAndGeneratedTokensAndSamplesTheNextIndex()
    {
        var s = Seq(1, 5, computed: 0, generated: 3);   // preempted after 3 generated tokens
        var plan = Planner().Plan([], [s], Shards(4, 100));
        var c = plan.Chunks.Single();
        Assert.Equal((0, 8, true), (c.Start, c.Count, c.Sample));
        var step = Grid.Gateway.Scheduling.Planner.ToStepChunk(c, Grid.ModelCore.Sampling.SamplingParams.Greedy, 42, 1);
        Assert.Equal(s.Tokens, step.Tokens);
        Assert.Equal(new Grid.ModelCore.Sampling.DrawKey(42, 1, 3), step.Sample!.Key);
    }

    [Fact]
    public void ShardsOnOneHostShareItsCacheAndOtherGatewaysBlocksAreNotFree()
    {
        // Two shards on one silo (one pool of 10 blocks of 4 tokens), 4 of which another gateway's sequences hold;
        // this gateway holds 2 on shard 0 (a running sequence of 8 tokens).
        var running = Seq(1, 7, computed: 7, shard: 0, generated: 1);
        var budgets = new[]
        {
            new ShardBudget(0, 4, 10, 6) { OwnBlocks = 2, Pool = "silo-a" },
            new ShardBudget(1, 4, 10, 6) { OwnBlocks = 0, Pool = "silo-a" },
        };
        // Free: 10 - 4 (others) - 2 (ours) = 4 blocks in the pool, whichever shard. Each newcomer needs 2 (5 tokens + 1).
        var waiting = new[] { Seq(2, 5), Seq(3, 5), Seq(4, 5) };
        var plan = Planner().Plan([running], waiting, budgets);
        Assert.Equal([2L, 3], plan.Admitted.Select(s => s.Id));
        Assert.Equal([1, 0], plan.Admitted.Select(s => s.Shard));   // spread over the pool's shards, fewest of ours first
        Assert.Empty(plan.Refused);                                // the third waits: the pool could hold it when empty
    }
}
