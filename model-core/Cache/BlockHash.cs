using System.IO.Hashing;
using System.Runtime.InteropServices;

namespace Grid.ModelCore.Cache;

/// <summary>
/// The identity of a full cache block as prefix caching knows it (vLLM's block hash): a 128-bit XxHash128 of the
/// block's token ids chained with the hash of the block before it, so equal hashes mean an equal whole prefix up to
/// and including the block (not merely equal tokens in the block). The gateway's routing index and the shards'
/// caches compute the same values.
/// </summary>
public static class BlockHash
{
    /// <summary>The chain's start: the "previous hash" of a sequence's first block.</summary>
    public static readonly UInt128 Root = UInt128.Zero;

    /// <summary>The hash of a block holding <paramref name="tokens"/> after the block whose hash is <paramref name="previous"/>.</summary>
    public static UInt128 Next(UInt128 previous, ReadOnlySpan<int> tokens)
    {
        var hasher = new XxHash128();
        Span<byte> head = stackalloc byte[16];
        MemoryMarshal.Write(head, in previous);
        hasher.Append(head);
        hasher.Append(MemoryMarshal.AsBytes(tokens));
        return hasher.GetCurrentHashAsUInt128();
    }

    /// <summary>The chained hashes of the full blocks among the first <paramref name="maxTokens"/> of <paramref name="tokens"/>.</summary>
    public static UInt128[] Chain(ReadOnlySpan<int> tokens, int blockSize, int maxTokens = int.MaxValue)
    {
        int blocks = Math.Min(tokens.Length, maxTokens) / blockSize;
        var hashes = new UInt128[blocks];
        var previous = Root;
        for (int b = 0; b < blocks; b++) hashes[b] = previous = Next(previous, tokens.Slice(b * blockSize, blockSize));
        return hashes;
    }
}
