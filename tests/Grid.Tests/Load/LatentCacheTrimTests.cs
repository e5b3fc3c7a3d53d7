using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using Xunit;
using static TorchSharp.torch;

namespace Grid.Tests.Load;

/// <summary>The latent cache gives memory back when load drops (issue 10), without disturbing the sequences that remain.</summary>
public sealed class LatentCacheTrimTests
{
    const int Layers = 2, Dim = 3, BlockSize = 2;

    /// <summary>Writes a value unique to (sequence, position, layer, element) at positions [from, to) of <paramref name="seq"/>.</summary>
    static void Fill(LatentCache cache, LatentSequence seq, int from, int to)
    {
        using var scope = NewDisposeScope();
        cache.Reserve(seq, to);
        var rows = tensor(cache.Rows(seq, from, to - from), ScalarType.Int64);
        for (int l = 0; l < Layers; l++)
        {
            var values = new float[(to - from) * Dim];
            for (int p = from; p < to; p++)
                for (int e = 0; e < Dim; e++) values[(p - from) * Dim + e] = Expected(seq, p, l, e);
            cache.Write(l, rows, tensor(values, [to - from, Dim]));
        }
        cache.Commit(seq, to);
    }

    static float Expected(LatentSequence seq, int position, int layer, int element) => seq.Id * 10000 + position * 10 + layer * 3 + element + 0.5f;

    static void AssertIntact(LatentCache cache, LatentSequence seq)
    {
        using var scope = NewDisposeScope();
        var rows = tensor(cache.Rows(seq, 0, seq.Length), ScalarType.Int64);
        for (int l = 0; l < Layers; l++)
        {
            var got = cache.Read(l, rows).data<float>().ToArray();
            for (int p = 0; p < seq.Length; p++)
                for (int e = 0; e < Dim; e++) Assert.Equal(Expected(seq, p, l, e), got[p * Dim + e]);
        }
    }

    [Fact]
    public void ReleasingMostSequencesGivesTheMemoryBackAndKeepsTheLiveLatents()
    {
        using var _ = no_grad();
        using var cache = new LatentCache(Layers, Dim, ScalarType.Float32, BlockSize, initialBlocks: 2, maxBlocks: 1000) { AutoTrim = true };
        long initial = cache.BytesReserved;
        var seqs = Enumerable.Range(0, 20).Select(_ => cache.Create()).ToList();
        foreach (var s in seqs) Fill(cache, s, 0, 5);                       // 3 blocks each: 60 blocks in use
        Assert.Equal(60, cache.BlocksInUse);
        Assert.Equal(64, cache.CapacityBlocks);                               // 2 -> 4 -> ... -> 64
        long peak = cache.BytesReserved;

        // Keep the last two sequences (their blocks sit at the top of the pool) and one in the middle.
        var keep = new[] { seqs[9], seqs[18], seqs[19] };
        foreach (var s in seqs.Except(keep)) cache.Release(s);
        Assert.Equal(9, cache.BlocksInUse);
        Assert.True(cache.Trims > 0);
        // The trim came at the release that left 15 blocks (<= 64 / 4) in use: the pool shrank to twice that.
        Assert.Equal(30, cache.CapacityBlocks);
        Assert.True(cache.BytesReserved < peak / 2, $"reserved {cache.BytesReserved} of peak {peak}");
        Assert.Equal(cache.CapacityBlocks * cache.BytesPerBlock, cache.BytesReserved);
        foreach (var s in keep)
        {
            Assert.All(s.BlockIds, b => Assert.InRange(b, 0, cache.CapacityBlocks - 1));
            AssertIntact(cache, s);
        }

        // The moved sequences keep growing and stay intact; freed blocks are reused without growing the pool.
        foreach (var s in keep) Fill(cache, s, 5, 8);
        foreach (var s in keep) AssertIntact(cache, s);
        Assert.Equal(12, cache.BlocksInUse);
        Assert.Equal(30, cache.CapacityBlocks);

        foreach (var s in keep) cache.Release(s);
        Assert.Equal(0, cache.BlocksInUse);
        Assert.Equal(initial, cache.BytesReserved);                           // back to the initial pool
        var again = cache.Create();
        Fill(cache, again, 0, 7);
        AssertIntact(cache, again);
    }

    [Fact]
    public void NoTrimMovesBlocksWhileABatchIsOpen()
    {
        using var _ = no_grad();
        using var cache = new LatentCache(Layers, Dim, ScalarType.Float32, BlockSize, initialBlocks: 1) { AutoTrim = true };
        var seqs = Enumerable.Range(0, 8).Select(_ => cache.Create()).ToList();
        foreach (var s in seqs) Fill(cache, s, 0, 4);
        int capacity = cache.CapacityBlocks;
        var last = seqs[^1];
        var blocks = last.BlockIds.ToArray();
        cache.BeginBatch();
        foreach (var s in seqs.Take(7)) cache.Release(s);
        Assert.Equal(capacity, cache.CapacityBlocks);                         // a step's rows were computed from these blocks
        Assert.Equal(blocks, last.BlockIds);
        cache.EndBatch();
        Assert.True(cache.CapacityBlocks < capacity);
        AssertIntact(cache, last);
        Assert.Throws<InvalidOperationException>(cache.EndBatch);
    }

    [Fact]
    public void AutoTrimOffKeepsThePoolUntilAnExplicitTrim()
    {
        using var _ = no_grad();
        using var cache = new LatentCache(Layers, Dim, ScalarType.Float32, BlockSize, initialBlocks: 1) { AutoTrim = false };
        var seqs = Enumerable.Range(0, 8).Select(_ => cache.Create()).ToList();
        foreach (var s in seqs) Fill(cache, s, 0, 4);
        int capacity = cache.CapacityBlocks;
        foreach (var s in seqs.Take(7)) cache.Release(s);
        Assert.Equal(capacity, cache.CapacityBlocks);
        Assert.True(cache.Trim());
        Assert.Equal(4, cache.CapacityBlocks);
        AssertIntact(cache, seqs[^1]);
        Assert.False(cache.Trim());                                            // half in use: nothing to give back
    }

    /// <summary>Decoding goes on exactly as without trimming after most of the pool was given back mid-generation.</summary>
    [Fact]
    public void ASequenceMovedByATrimDecodesExactlyAsWithoutTrimming()
    {
        var trimmed = Decode(autoTrim: true, out long trims);
        var kept = Decode(autoTrim: false, out long none);
        Assert.True(trims > 0);
        Assert.Equal(0, none);
        Assert.Equal(kept.Count, trimmed.Count);
        for (int i = 0; i < kept.Count; i++) Assert.Equal(0.0, ModelTestKit.MaxAbsDiff(kept[i], trimmed[i]));
    }

    static List<float[]> Decode(bool autoTrim, out long trims)
    {
        using var _ = no_grad();
        using var model = DeepseekV2Model.Load(Golden.Dir("lite_f32"), new ModelLoadOptions { CacheBlockSize = 4, CacheInitialBlocks = 1 });
        var cache = model.Cache!;
        cache.AutoTrim = autoTrim;
        // Twelve sequences fill the pool; the one created last (highest blocks) survives the others.
        var others = Enumerable.Range(0, 11).Select(_ => cache.Create()).ToList();
        var survivor = cache.Create();
        var prompt = Enumerable.Range(1, 14).ToArray();
        var chunks = others.Select((s, i) => new SequenceChunk(s, prompt.Select(t => t + i).ToArray())).Append(new SequenceChunk(survivor, prompt)).ToList();
        var logits = new List<float[]>();
        int next;
        using (var o = model.Forward(chunks)) { logits.Add(ModelTestKit.Row(o.Logits, chunks.Count - 1)); next = Grid.ModelCore.Sampling.Sampler.Argmax(logits[^1]); }
        foreach (var s in others) cache.Release(s);
        for (int i = 0; i < 6; i++)
        {
            using var o = model.Forward([new SequenceChunk(survivor, [next])]);
            logits.Add(ModelTestKit.Row(o.Logits, 0));
            next = Grid.ModelCore.Sampling.Sampler.Argmax(logits[^1]);
        }
        trims = cache.Trims;
        return logits;
    }
}
