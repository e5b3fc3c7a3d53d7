using Grid.ModelCore.Model;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests;

/// <summary>
/// Identity and leases on one attention shard (model-core, the golden model, routed experts in process): sequences of
/// different gateways never mix, a chunk that does not continue its cache is refused and changes nothing, and the
/// caches of a gateway whose lease expired are freed.
/// </summary>
public sealed class AttentionShardTests
{
    static readonly TokenSampling Greedy = new(new SamplingParams { Temperature = 0 }, new DrawKey(0, 0, 0));

    /// <summary>Walks one step of <paramref name="owner"/> to the end, running the routed experts in process.</summary>
    static ChunkResult[] Step(DeepseekV2Model model, AttentionShard shard, Guid owner, long stepId, params StepChunk[] chunks)
    {
        var dispatch = shard.Start(chunks, owner: owner, stepId: stepId);
        while (dispatch is not null)
        {
            using var scope = NewDisposeScope();
            dispatch = shard.Continue(model.Experts(dispatch.Layer, dispatch.Input, dispatch.Routing), owner, stepId);
        }
        return shard.Finish(owner);
    }

    static int[] Generate(DeepseekV2Model model, AttentionShard shard, Guid owner, long id, int[] prompt, int n)
    {
        var tokens = new List<int>();
        var next = Step(model, shard, owner, 1, new StepChunk(id, 0, prompt) { Sample = Greedy })[0].Next!.Token;
        tokens.Add(next);
        for (int i = 1; i < n; i++)
        {
            next = Step(model, shard, owner, 1 + i, new StepChunk(id, prompt.Length + i - 1, [next]) { Sample = Greedy })[0].Next!.Token;
            tokens.Add(next);
        }
        return tokens.ToArray();
    }

    [Fact]
    public void TwoGatewaysUsingTheSameSequenceIdNeverShareAContextAndTheirWalksInterleave()
    {
        var expected = Golden.Load("full_f32", "text");
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        using var shard = new AttentionShard(model);
        Guid a = Guid.NewGuid(), b = Guid.NewGuid();
        var other = expected.PromptIds.Reverse().ToArray();
        var alone = Generate(model, shard, Guid.NewGuid(), 7, other, 6);

        // Gateway A and gateway B both call their sequence 7; their steps interleave call by call on the shard.
        var tokensA = new List<int>();
        var tokensB = new List<int>();
        StepChunk ChunkA() => tokensA.Count == 0 ? new StepChunk(7, 0, expected.PromptIds) { Sample = Greedy }
            : new StepChunk(7, expected.PromptIds.Length + tokensA.Count - 1, [tokensA[^1]]) { Sample = Greedy };
        StepChunk ChunkB() => tokensB.Count == 0 ? new StepChunk(7, 0, other) { Sample = Greedy }
            : new StepChunk(7, other.Length + tokensB.Count - 1, [tokensB[^1]]) { Sample = Greedy };
        for (int step = 0; step < 6; step++)
        {
            var da = shard.Start([ChunkA()], owner: a, stepId: step);
            var db = shard.Start([ChunkB()], owner: b, stepId: step);
            while (da is not null || db is not null)
            {
                using var scope = NewDisposeScope();
                if (da is not null) da = shard.Continue(model.Experts(da.Layer, da.Input, da.Routing), a, step);
                if (db is not null) db = shard.Continue(model.Experts(db.Layer, db.Input, db.Routing), b, step);
            }
            tokensA.Add(shard.Finish(a)[0].Next!.Token);
            tokensB.Add(shard.Finish(b)[0].Next!.Token);
        }
        Assert.Equal(expected.GeneratedIds.Take(6), tokensA);
        Assert.Equal(alone, tokensB);
    }

    [Fact]
    public void AChunkThatDoesNotContinueItsCacheIsRefusedAndChangesNothing()
    {
        var expected = Golden.Load("full_f32", "text");
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        using var shard = new AttentionShard(model);
        var owner = Guid.NewGuid();
        int p = expected.PromptIds.Length;
        var first = Step(model, shard, owner, 1, new StepChunk(1, 0, expected.PromptIds) { Sample = Greedy })[0].Next!.Token;
        var before = shard.Stats();

        // A late duplicate of the prefill, a position past the end, and a sequence the shard never saw (not at 0).
        var refused = Assert.Throws<StepRefusedException>(() => shard.Start([
            new StepChunk(1, p + 1, [first]) { Sample = Greedy },
            new StepChunk(2, 3, [5, 6]) { Sample = Greedy },
        ], owner: owner, stepId: 2));
        Assert.Equal([(1L, RefusalReason.Mismatch, p + 1, p), (2L, RefusalReason.Mismatch, 3, 0)],
            refused.Refusals.Select(r => (r.SequenceId, r.Reason, r.Position, r.Held)));
        Assert.Equal(before, shard.Stats());
        // Another gateway naming the same id holds nothing of it.
        var stranger = Assert.Throws<StepRefusedException>(() => shard.Start([new StepChunk(1, p, [first]) { Sample = Greedy }], owner: Guid.NewGuid(), stepId: 1));
        Assert.Equal(0, Assert.Single(stranger.Refusals).Held);

        // The right continuation still follows the golden output.
        var second = Step(model, shard, owner, 3, new StepChunk(1, p, [first]) { Sample = Greedy })[0].Next!.Token;
        Assert.Equal(expected.GeneratedIds.Take(2), [first, second]);
    }

    [Fact]
    public void ChunksRunAgainAfterTheShardCommittedThemRewindItAndGiveTheSameAnswer()
    {
        // A step of several shards fails as a whole when one of them fails, after this shard walked it to the end: the
        // gateway steps the same chunks again, and they must not be refused (two shards would otherwise keep refusing
        // each other's sequences, one step each, and recompute them forever).
        var expected = Golden.Load("full_f32", "text");
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        using var shard = new AttentionShard(model);
        var owner = Guid.NewGuid();
        int p = expected.PromptIds.Length;
        var prefill = Step(model, shard, owner, 1, new StepChunk(1, 0, expected.PromptIds) { Sample = Greedy })[0].Next!;
        var decode = Step(model, shard, owner, 2, new StepChunk(1, p, [prefill.Token]) { Sample = Greedy })[0].Next!;
        var held = shard.Stats();

        // The decode step again: same token, same logprob bits, and the shard holds what it held.
        var again = Step(model, shard, owner, 3, new StepChunk(1, p, [prefill.Token]) { Sample = Greedy })[0].Next!;
        Assert.Equal((decode.Token, decode.Logprob), (again.Token, again.Logprob));
        Assert.Equal(held, shard.Stats());
        // Further back, over the prompt's tail and the first generated token: rewound to 3, recomputed, same next token.
        var tail = expected.PromptIds[3..].Append(prefill.Token).ToArray();
        var rerun = Step(model, shard, owner, 4, new StepChunk(1, 3, tail) { Sample = Greedy })[0].Next!;
        Assert.Equal(decode.Token, rerun.Token);
        Assert.Equal(decode.Logprob, rerun.Logprob, 1e-3);
        Assert.Equal(held.Tokens, shard.Stats().Tokens);
        Assert.Equal(2, shard.Rewound);

        // Other token ids at a held position are not the same work: refused, nothing changes.
        var other = Assert.Throws<StepRefusedException>(() => shard.Start([new StepChunk(1, p, [prefill.Token + 1]) { Sample = Greedy }], owner: owner, stepId: 5));
        Assert.Equal((1L, RefusalReason.Mismatch, p, p + 1), other.Refusals.Select(r => (r.SequenceId, r.Reason, r.Position, r.Held)).Single());
        Assert.Equal(held.Tokens, shard.Stats().Tokens);
        // And the sequence goes on as the golden run did.
        var third = Step(model, shard, owner, 6, new StepChunk(1, p + 1, [decode.Token]) { Sample = Greedy })[0].Next!.Token;
        Assert.Equal(expected.GeneratedIds.Take(3), [prefill.Token, decode.Token, third]);
    }

    [Fact]
    public void ExpiredLeasesFreeTheirCachesAndLiveOnesKeepThem()
    {
        var prompt = Golden.Load("full_f32", "text").PromptIds;
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"));
        using var shard = new AttentionShard(model);
        Guid dead = Guid.NewGuid(), live = Guid.NewGuid();
        var t0 = DateTimeOffset.UtcNow;
        shard.Start([new StepChunk(1, 0, prompt) { Sample = Greedy }, new StepChunk(2, 0, prompt[..3]) { Sample = Greedy }], owner: dead, stepId: 1, now: t0);
        // The dead gateway's step never finishes (it died mid-walk); the live one finishes and renews later.
        Step(model, shard, live, 1, new StepChunk(1, 0, prompt) { Sample = Greedy });
        shard.Touch(live, t0 + TimeSpan.FromSeconds(15));
        Assert.Equal(3, shard.Stats().Sequences);

        Assert.Equal(0, shard.ExpireLeases(t0 + TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(20)));
        Assert.Equal(2, shard.ExpireLeases(t0 + TimeSpan.FromSeconds(25), TimeSpan.FromSeconds(20)));
        Assert.Equal(1, shard.Stats().Sequences);
        Assert.Equal(2, shard.Reclaimed);
        Assert.Equal(model.Cache!.BlocksInUse, shard.Budget(0, live).OwnBlocks);   // only the live gateway's blocks are left
        Assert.Throws<InvalidOperationException>(() => shard.Finish(dead));            // its walk was abandoned too
    }

    [Fact]
    public void AStepThatDoesNotFitIsRefusedAsNoRoomAndChangesNothing()
    {
        var prompt = Golden.Load("full_f32", "text").PromptIds;
        // Room for 2 blocks of 4 tokens.
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"), new ModelLoadOptions { CacheBlockSize = 4, CacheInitialBlocks = 1, CacheMaxBytes = 1 });
        var blocks = model.Cache!.MaxBlocks;
        using var shard = new AttentionShard(model);
        var owner = Guid.NewGuid();
        var tooLong = Enumerable.Repeat(prompt[0], blocks * 4 + 1).ToArray();
        var refused = Assert.Throws<StepRefusedException>(() => shard.Start([new StepChunk(1, 0, tooLong) { Sample = Greedy }], owner: owner));
        Assert.Equal(RefusalReason.NoRoom, Assert.Single(refused.Refusals).Reason);
        Assert.Equal(0, shard.Stats().Sequences);
        Assert.Equal(0, model.Cache.BlocksInUse);
    }
}
