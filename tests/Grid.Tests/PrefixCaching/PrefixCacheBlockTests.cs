using Grid.ModelCore.Cache;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests.PrefixCaching;

/// <summary>
/// The latent cache's prefix-caching bookkeeping on its own (no model): full blocks hashed with their chain, shared
/// read-only with reference counts, kept evictable after release, evicted least recently used under the budget, and
/// kept right across trims. Every row holds a value that names the token and position it was written for, so a block
/// shared or moved with the wrong contents shows.
/// </summary>
public sealed class PrefixCacheBlockTests
{
    const int Layers = 2, Dim = 3, BlockSize = 4;

    static LatentCache NewCache(int initialBlocks = 4, int maxBlocks = 1000, bool autoTrim = false) =>
        new(Layers, Dim, ScalarType.Float32, BlockSize, initialBlocks, maxBlocks) { PrefixCaching = true, AutoTrim = autoTrim };

    /// <summary>The latent a position of a token stream holds: a function of the tokens up to it (as a real prefix's would be).</summary>
    static float Expected(int[] tokens, int position, int layer, int element) =>
        tokens.Take(position + 1).Aggregate(7, (h, t) => unchecked(h * 31 + t)) % 100000 + layer * 0.25f + element * 0.125f;

    /// <summary>Computes positions [seq.Length, tokens.Length) of <paramref name="tokens"/> as a step would: reserve, write, commit with ids.</summary>
    static void Step(LatentCache cache, LatentSequence seq, int[] tokens, int upTo)
    {
        using var scope = NewDisposeScope();
        int from = seq.Length;
        cache.Reserve(seq, upTo);
        var rows = tensor(cache.Rows(seq, from, upTo - from), ScalarType.Int64);
        for (int l = 0; l < Layers; l++)
        {
            var values = new float[(upTo - from) * Dim];
            for (int p = from; p < upTo; p++)
                for (int e = 0; e < Dim; e++) values[(p - from) * Dim + e] = Expected(tokens, p, l, e);
            cache.Write(l, rows, tensor(values, [upTo - from, Dim]));
        }
        cache.Commit(seq, from, tokens[from..upTo]);
    }

    static void AssertHolds(LatentCache cache, LatentSequence seq, int[] tokens)
    {
        using var scope = NewDisposeScope();
        var rows = tensor(cache.Rows(seq, 0, seq.Length), ScalarType.Int64);
        for (int l = 0; l < Layers; l++)
        {
            var got = cache.Read(l, rows).data<float>().ToArray();
            for (int p = 0; p < seq.Length; p++)
                for (int e = 0; e < Dim; e++) Assert.Equal(Expected(tokens, p, l, e), got[p * Dim + e]);
        }
        Assert.Equal(tokens[..seq.Length], seq.Tokens.ToArray());
    }

    static float[] Rows(LatentCache cache, IEnumerable<int> blocks)
    {
        using var scope = NewDisposeScope();
        var rows = tensor(blocks.SelectMany(b => Enumerable.Range(b * BlockSize, BlockSize).Select(r => (long)r)).ToArray(), ScalarType.Int64);
        return Enumerable.Range(0, Layers).SelectMany(l => cache.Read(l, rows).data<float>().ToArray()).ToArray();
    }

    static readonly int[] System = Enumerable.Range(100, 10).ToArray();   // 2 full blocks and 2 tokens

    static int[] With(params int[] tail) => [.. System, .. tail];

    [Fact]
    public void ASecondSequenceSharesTheFullBlocksOfACommonPrefixAndComputesOnlyTheRest()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = With(1, 2, 3);                                    // 13 tokens: 3 full blocks
        var first = cache.Create();
        Assert.Equal(0, cache.AttachPrefix(first, a, a.Length - 1));   // nothing cached yet
        Step(cache, first, a, a.Length);
        Assert.Equal(3, cache.RegisteredBlocks);

        var b = With(9, 9, 9, 9, 9);                              // shares 10 tokens: 2 full blocks
        var second = cache.Create();
        Assert.Equal(8, cache.AttachPrefix(second, b, b.Length - 1));
        Assert.Equal(first.BlockIds.Take(2), second.BlockIds);
        Assert.Equal(8, second.CachedPrefix);
        Assert.Equal(b[..8], second.Tokens.ToArray());            // penalties see the shared tokens as its own history
        Assert.Equal(2, cache.SharedBlocks);
        int inUse = cache.BlocksInUse;
        Step(cache, second, b, b.Length);                         // positions 8..14: the shared partial block is NOT shared
        Assert.Equal(inUse + 2, cache.BlocksInUse);               // 2 private blocks: [8, 12) and [12, 15)
        Assert.DoesNotContain(second.BlockIds[2], first.BlockIds);
        AssertHolds(cache, first, a);
        AssertHolds(cache, second, b);
        Assert.Equal(a.Length + b.Length, cache.PrefixQueries);
        Assert.Equal(8, cache.PrefixHits);
    }

    [Fact]
    public void AFullHitStillLeavesTheLastTokenToCompute()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = Enumerable.Range(1, 12).ToArray();               // exactly 3 full blocks
        var first = cache.Create();
        Step(cache, first, a, a.Length);
        var again = cache.Create();
        Assert.Equal(8, cache.AttachPrefix(again, a, a.Length - 1));   // not 12: the last token's logits are needed
        Step(cache, again, a, a.Length);
        AssertHolds(cache, again, a);
    }

    [Fact]
    public void ASharedBlockIsNeverWritten()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = With(1, 2);
        var owner = cache.Create();
        Step(cache, owner, a, a.Length);
        var shared = owner.BlockIds.Take(2).ToArray();
        var before = Rows(cache, shared);

        // Three sequences start from the shared blocks and run on for many positions each.
        var others = Enumerable.Range(0, 3).Select(i => (Seq: cache.Create(), Tokens: With([.. Enumerable.Range(50 * i, 30)]))).ToList();
        foreach (var (seq, tokens) in others)
        {
            Assert.Equal(8, cache.AttachPrefix(seq, tokens, tokens.Length - 1));
            for (int p = 9; p <= tokens.Length; p += 3) Step(cache, seq, tokens, p);
            if (seq.Length < tokens.Length) Step(cache, seq, tokens, tokens.Length);
        }
        Assert.Equal(before, Rows(cache, shared));
        foreach (var (seq, tokens) in others) AssertHolds(cache, seq, tokens);
        // Going back into the shared blocks is refused (it would rewrite them).
        Assert.Throws<InvalidOperationException>(() => cache.Commit(others[0].Seq, 5));
        Assert.Throws<InvalidOperationException>(() => cache.AttachPrefix(others[0].Seq, a, a.Length - 1));   // only new sequences attach
    }

    [Fact]
    public void ReleasedBlocksStayCachedAndAreReusedOnAHit()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = With(1, 2, 3);
        var first = cache.Create();
        Step(cache, first, a, a.Length);
        var blocks = first.BlockIds.ToArray();
        cache.Release(first);
        Assert.Equal(0, cache.BlocksInUse);
        Assert.Equal(3, cache.CachedBlocks);                      // the partial 4th block was freed, the full ones kept

        var later = cache.Create();
        Assert.Equal(12, cache.AttachPrefix(later, a, a.Length));   // allowed up to the whole stream here
        Assert.Equal(blocks.Take(3), later.BlockIds);
        Assert.Equal(0, cache.CachedBlocks);
        AssertHolds(cache, later, a);
    }

    [Fact]
    public void UnderATinyBudgetAllocationEvictsTheLeastRecentlyUsedChainFromItsEnd()
    {
        using var _ = no_grad();
        using var cache = NewCache(initialBlocks: 6, maxBlocks: 6);
        var a = Enumerable.Range(1, 12).ToArray();    // 3 blocks
        var b = Enumerable.Range(40, 12).ToArray();   // 3 blocks
        var sa = cache.Create(); Step(cache, sa, a, 12); cache.Release(sa);
        var sb = cache.Create(); Step(cache, sb, b, 12); cache.Release(sb);
        Assert.Equal(6, cache.CachedBlocks);

        // A new stream of 2 blocks: the pool is at its budget, so the oldest chain (a) loses its last two blocks.
        var c = Enumerable.Range(80, 8).ToArray();
        var sc = cache.Create();
        Step(cache, sc, c, 8);
        Assert.Equal(2, cache.Evictions);
        Assert.Equal(6, cache.CapacityBlocks);
        var again = cache.Create();
        Assert.Equal(4, cache.AttachPrefix(again, a, 12));        // a's first block survived
        AssertHolds(cache, again, a);
        var bAgain = cache.Create();
        Assert.Equal(12, cache.AttachPrefix(bAgain, b, 12));      // b untouched
        AssertHolds(cache, bAgain, b);
        // Nothing evictable is left and no block is free: the next allocation fails rather than touch a held block.
        var d = cache.Create();
        Assert.Throws<InvalidOperationException>(() => cache.Reserve(d, 1));
        AssertHolds(cache, sc, c);
    }

    [Fact]
    public void ATrimKeepsHeldAndRecentlyUsedCachedBlocksRightAndEvictsTheRest()
    {
        using var _ = no_grad();
        using var cache = NewCache(initialBlocks: 2, maxBlocks: 1000);
        var streams = Enumerable.Range(0, 16).Select(i => Enumerable.Range(1000 * (i + 1), 8).ToArray()).ToList();   // 2 blocks each
        var seqs = streams.Select(t => { var s = cache.Create(); Step(cache, s, t, 8); return s; }).ToList();
        int capacity = cache.CapacityBlocks;                      // 32
        // A survivor shares stream 15's prefix; everything else is released (most recently: stream 14).
        var survivor = cache.Create();
        var survivorTokens = streams[15].Concat([7, 7, 7]).ToArray();
        Assert.Equal(8, cache.AttachPrefix(survivor, survivorTokens, survivorTokens.Length - 1));
        Step(cache, survivor, survivorTokens, survivorTokens.Length);
        for (int i = 0; i < 16; i++) cache.Release(seqs[i]);
        Assert.Equal(3, cache.BlocksInUse);                       // 2 shared + 1 private
        Assert.Equal(30, cache.CachedBlocks);

        Assert.True(cache.Trim());
        Assert.True(cache.CapacityBlocks < capacity);
        Assert.All(survivor.BlockIds, b => Assert.InRange(b, 0, cache.CapacityBlocks - 1));
        AssertHolds(cache, survivor, survivorTokens);
        Assert.True(cache.CachedBlocks <= cache.CapacityBlocks - cache.BlocksInUse);
        Assert.Equal(cache.CachedBlocks + 2, cache.RegisteredBlocks);   // the survivor's 2 shared blocks + what stayed cached
        // Whatever stayed cached still hits with the right latents; what was evicted misses cleanly.
        int hits = 0;
        foreach (var t in streams)
        {
            var probe = cache.Create();
            int m = cache.AttachPrefix(probe, t, 8);
            if (m > 0) { hits++; AssertHolds(cache, probe, t); }
            cache.Release(probe);
        }
        Assert.InRange(hits, 2, 16);                              // stream 15 (held) and at least the most recent cached one
        Assert.Equal(8, cache.AttachPrefix(cache.Create(), streams[14], 8));   // the most recently released chain was kept
    }

    [Fact]
    public void WithPrefixCachingOffReleasedBlocksAreFreedAndNothingIsShared()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        cache.PrefixCaching = false;
        var a = With(1, 2, 3);
        var first = cache.Create();
        Step(cache, first, a, a.Length);
        var second = cache.Create();
        Assert.Equal(0, cache.AttachPrefix(second, a, a.Length - 1));
        cache.Release(first);
        Assert.Equal(0, cache.CachedBlocks);
        Assert.Equal(0, cache.RegisteredBlocks);
        Assert.Equal(0, cache.PrefixQueries);
    }

    [Fact]
    public void TheChainHashDependsOnTheWholePrefixNotOnlyTheBlock()
    {
        var x = BlockHash.Chain([1, 2, 3, 4, 5, 6, 7, 8], 4);
        var y = BlockHash.Chain([9, 2, 3, 4, 5, 6, 7, 8], 4);
        Assert.Equal(2, x.Length);
        Assert.NotEqual(x[0], y[0]);
        Assert.NotEqual(x[1], y[1]);                              // same tokens in block 1, different prefix
        Assert.Equal(x, BlockHash.Chain([1, 2, 3, 4, 5, 6, 7, 8, 9], 4));   // the partial block is not hashed
    }
    [Fact]
    public void ARewindCutsTheSequenceBackAndTheSameStepsRebuildItExactly()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = With(1, 2, 3, 4, 5, 6);                           // 16 tokens: 4 full blocks
        var seq = cache.Create();
        Step(cache, seq, a, 11);
        var blocksAt11 = seq.BlockIds.ToArray();
        Step(cache, seq, a, 16);                                  // a step the gateway never saw the answer of
        Assert.Equal(4, seq.HashedBlocks);
        Assert.Equal(4, cache.RegisteredBlocks);

        // Back to 11 (inside block 2, which was full and indexed): blocks 3 leaves, block 2 leaves the index.
        Assert.True(cache.CanRewind(seq, 11));
        cache.Rewind(seq, 11);
        Assert.Equal(11, seq.Length);
        Assert.Equal(blocksAt11, seq.BlockIds);
        Assert.Equal(2, seq.HashedBlocks);
        Assert.Equal(3, cache.RegisteredBlocks);                  // block 3 stays indexed, as evictable cache
        Assert.Equal(1, cache.CachedBlocks);
        AssertHolds(cache, seq, a);

        // The same step again: same rows, and the chain is indexed again, so a newcomer shares all of it.
        Step(cache, seq, a, 16);
        AssertHolds(cache, seq, a);
        Assert.Equal(4, seq.HashedBlocks);
        var other = cache.Create();
        Assert.Equal(12, cache.AttachPrefix(other, a, a.Length - 1));
        Assert.Equal(seq.BlockIds.Take(3), other.BlockIds);
    }

    [Fact]
    public void ARewindToABlockEdgeLetsGoOfSharedBlocksButNeverRewritesOne()
    {
        using var _ = no_grad();
        using var cache = NewCache();
        var a = With(1, 2, 3);                                    // 13 tokens
        var first = cache.Create();
        Step(cache, first, a, a.Length);
        var second = cache.Create();
        Assert.Equal(12, cache.AttachPrefix(second, a, a.Length - 1));   // shares blocks 0-2
        Step(cache, second, a, a.Length);
        var shared = Rows(cache, first.BlockIds.Take(3));

        // Into a shared full block: refused (its rows would be written again while another sequence reads them).
        Assert.False(cache.CanRewind(second, 10));
        Assert.Throws<InvalidOperationException>(() => cache.Rewind(second, 10));
        Assert.Equal(13, second.Length);
        // To the edge of a shared block: the sequence lets go of it, the other keeps it unchanged.
        Assert.True(cache.CanRewind(second, 8));
        cache.Rewind(second, 8);
        Assert.Equal(first.BlockIds.Take(2), second.BlockIds);
        Assert.Equal(8, second.CachedPrefix);
        Step(cache, second, a, a.Length);
        Assert.Equal(shared, Rows(cache, first.BlockIds.Take(3)));
        AssertHolds(cache, first, a);
        AssertHolds(cache, second, a);
        // Nothing to rewind to: position 0 is a restart, past the end is not held.
        Assert.False(cache.CanRewind(second, 0));
        Assert.False(cache.CanRewind(second, 14));
    }
}
