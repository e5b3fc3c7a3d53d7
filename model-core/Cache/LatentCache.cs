using Grid.ModelCore.Runtime;
using static TorchSharp.torch;

namespace Grid.ModelCore.Cache;

/// <summary>
/// One sequence's share of the latent cache: the blocks it owns and how many positions are filled.
/// Position p lives in row <c>Blocks[p / blockSize] * blockSize + p % blockSize</c> of every layer's pool.
/// </summary>
public sealed class LatentSequence
{
    internal readonly List<int> Blocks = new();
    internal LatentSequence(long id) => Id = id;

    public long Id { get; }

    /// <summary>Positions whose latents are in the cache.</summary>
    public int Length { get; internal set; }

    public bool Released { get; internal set; }

    public int BlockCount => Blocks.Count;

    internal readonly List<int> TokenIds = new();

    /// <summary>
    /// The token ids at positions [0, <see cref="Length"/>) when every step committed them (<see cref="LatentCache.Commit(LatentSequence, int, ReadOnlySpan{int})"/>):
    /// the sequence's own history, rebuilt whenever the cache is rebuilt (recompute replays every token), which
    /// sampling penalties read.
    /// </summary>
    public ReadOnlySpan<int> Tokens => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(TokenIds);

    /// <summary>The pool blocks the sequence owns, in position order (a trim may renumber them).</summary>
    public IReadOnlyList<int> BlockIds => Blocks;
}

/// <summary>
/// The MLA latent cache of one host, paged: per layer one pool of fixed-size blocks, each row holding a
/// token's <c>c_KV</c> (kv_lora_rank) followed by its rotated shared key <c>k_R</c> (qk_rope_head_dim).
/// Sequences own whole blocks, taken lowest-first from a free list and returned when the sequence is released; the
/// pool doubles when it runs out, up to <see cref="MaxBlocks"/> (the host's budget, which the planner plans against).
/// <para>The pool also gives memory back: when a release (or the end of a step) leaves at most a quarter of it in use,
/// <see cref="Trim"/> moves the live blocks above the new size into free blocks below it, rewrites their sequences'
/// block lists, and replaces every layer's pool by one of twice the blocks in use (never below the initial size).
/// Growing at full and shrinking at a quarter to half keeps the copying amortised (no thrashing at a boundary). A
/// trim waits while any step's batch is open (<see cref="BeginBatch"/>): those hold cache rows computed from the
/// block lists. All methods must run on the inference thread.</para>
/// </summary>
public sealed class LatentCache : IDisposable
{
    readonly int _numLayers;
    readonly ScalarType _dtype;
    readonly SortedSet<int> _freeBlocks = new();   // lowest first, so live blocks stay packed low
    readonly Dictionary<long, LatentSequence> _live = new();
    Tensor[] _pools;   // per layer [capacityBlocks * blockSize, latentDim]
    int _capacityBlocks;
    long _nextId;

    public int BlockSize { get; }
    public int LatentDim { get; }
    public int ElementSize { get; }

    /// <summary>The 8-bit row form, or null when rows hold latents in the compute dtype.</summary>
    public LatentRowCodec? Codec { get; }

    /// <summary>Bytes of one token's row in one layer: latentDim * element size, or the codec's row (codes + scales).</summary>
    public int RowBytes => Codec?.RowBytes ?? LatentDim * ElementSize;

    /// <summary>Bytes one block holds across all layers.</summary>
    public long BytesPerBlock => (long)BlockSize * RowBytes * _numLayers;

    /// <summary>Bytes one cached token takes across all layers: (kv_lora_rank + qk_rope_head_dim) * layers * element size
    /// (8-bit rows: (kv_lora_rank + qk_rope_head_dim + 8) * layers).</summary>
    public long BytesPerToken => (long)RowBytes * _numLayers;

    public LatentCache(int numLayers, int latentDim, ScalarType dtype, int blockSize = 16, int initialBlocks = 64, int maxBlocks = int.MaxValue, LatentRowCodec? codec = null)
    {
        if (codec is not null && codec.LatentDim != latentDim) throw new ArgumentException("the codec's row does not match the latent dimension", nameof(codec));
        Codec = codec;
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize));
        if (maxBlocks < 1) throw new ArgumentOutOfRangeException(nameof(maxBlocks), "the latent cache needs at least one block");
        MaxBlocks = maxBlocks;
        _numLayers = numLayers;
        LatentDim = latentDim;
        _dtype = dtype;
        BlockSize = blockSize;
        ElementSize = TensorBytes.ElementSize(dtype);
        _pools = new Tensor[numLayers];
        using (NewDisposeScope())
            for (int l = 0; l < numLayers; l++) _pools[l] = zeros(0, PoolWidth, PoolDtype).DetachFromDisposeScope();
        InitialBlocks = Math.Clamp(initialBlocks, 1, maxBlocks);
        Grow(InitialBlocks);
    }

    /// <summary>Blocks the pools start with and never shrink below.</summary>
    public int InitialBlocks { get; }

    /// <summary>Whether releases and the ends of steps trim the pools (on by default: an idle host gives its cache memory back).</summary>
    public bool AutoTrim { get; set; } = true;

    /// <summary>Trims that free at least this many bytes also hand free heap pages back to the OS (<see cref="HeapTrim"/>).</summary>
    public const long HeapTrimBytes = 16L << 20;

    /// <summary>Times <see cref="Trim"/> shrank the pools.</summary>
    public long Trims { get; private set; }

    /// <summary>Most blocks the pools may grow to: the host's latent-cache budget.</summary>
    public int MaxBlocks { get; }

    /// <summary>Blocks of <see cref="BlockSize"/> tokens that fit in <paramref name="bytes"/> for a model of this shape.</summary>
    public static int BlocksFor(long bytes, int numLayers, int latentDim, ScalarType dtype, int blockSize, LatentRowCodec? codec = null)
    {
        long perBlock = (long)blockSize * (codec?.RowBytes ?? latentDim * TensorBytes.ElementSize(dtype)) * numLayers;
        return (int)Math.Clamp(bytes / perBlock, 1, int.MaxValue);
    }

    public int LiveSequences => _live.Count;
    public int BlocksInUse => _capacityBlocks - _freeBlocks.Count;
    public int CapacityBlocks => _capacityBlocks;

    /// <summary>Bytes held by live sequences (whole blocks).</summary>
    public long BytesInUse => BlocksInUse * BytesPerBlock;

    /// <summary>Bytes reserved by the pools, used or free.</summary>
    public long BytesReserved => _capacityBlocks * BytesPerBlock;

    /// <summary>Tokens cached over all live sequences.</summary>
    public long TokensCached => _live.Values.Sum(s => (long)s.Length);

    public LatentSequence Create()
    {
        var seq = new LatentSequence(++_nextId);
        _live[seq.Id] = seq;
        return seq;
    }

    public long SequenceBytes(LatentSequence seq) => seq.Blocks.Count * BytesPerBlock;

    /// <summary>Makes room for positions [0, length) of <paramref name="seq"/>.</summary>
    public void Reserve(LatentSequence seq, int length)
    {
        if (seq.Released) throw new InvalidOperationException($"latent sequence {seq.Id} was released");
        int needed = (length + BlockSize - 1) / BlockSize;
        while (seq.Blocks.Count < needed)
        {
            if (_freeBlocks.Count == 0)
            {
                if (_capacityBlocks >= MaxBlocks)
                    throw new InvalidOperationException($"the latent cache is full: {MaxBlocks} blocks of {BlockSize} tokens are in use");
                Grow(Math.Min(_capacityBlocks, MaxBlocks - _capacityBlocks));
            }
            int block = _freeBlocks.Min;
            _freeBlocks.Remove(block);
            seq.Blocks.Add(block);
        }
    }

    /// <summary>Marks positions [0, length) as filled (after a step wrote them in every layer).</summary>
    public void Commit(LatentSequence seq, int length)
    {
        if (length > seq.Blocks.Count * BlockSize) throw new InvalidOperationException("commit past the reserved blocks");
        seq.Length = length;
    }

    /// <summary>Marks positions [start, start + tokens.Length) as filled with <paramref name="tokens"/> (after a step wrote them in every layer).</summary>
    public void Commit(LatentSequence seq, int start, ReadOnlySpan<int> tokens)
    {
        Commit(seq, start + tokens.Length);
        if (seq.TokenIds.Count > start) seq.TokenIds.RemoveRange(start, seq.TokenIds.Count - start);
        if (seq.TokenIds.Count == start) seq.TokenIds.AddRange(tokens);
        else seq.TokenIds.Clear();   // positions before start were committed without ids: the history is unknown
    }

    /// <summary>Returns the sequence's blocks to the free list. Idempotent.</summary>
    public void Release(LatentSequence seq)
    {
        if (seq.Released) return;
        seq.Released = true;
        foreach (var b in seq.Blocks) _freeBlocks.Add(b);
        seq.Blocks.Clear();
        seq.TokenIds.Clear();
        seq.Length = 0;
        _live.Remove(seq.Id);
        if (AutoTrim) Trim();
    }

    int _openBatches;

    /// <summary>A step's batch computed rows from the block lists: no trim may move blocks until <see cref="EndBatch"/>.</summary>
    public void BeginBatch() => _openBatches++;

    /// <summary>Closes a batch opened by <see cref="BeginBatch"/>; the last one to close trims when the pool is mostly free.</summary>
    public void EndBatch()
    {
        if (_openBatches == 0) throw new InvalidOperationException("no batch is open on the latent cache");
        if (--_openBatches == 0 && AutoTrim) Trim();
    }

    /// <summary>
    /// Gives memory back when at most a quarter of the pool is in use and no batch is open: the pools shrink to twice
    /// the blocks in use (at least <see cref="InitialBlocks"/>), live blocks above that moving into free ones below it
    /// (their sequences' latents unchanged). Returns whether the pools shrank.
    /// </summary>
    public bool Trim()
    {
        if (_openBatches > 0 || _capacityBlocks <= InitialBlocks) return false;
        int inUse = BlocksInUse;
        if ((long)inUse * 4 > _capacityBlocks) return false;
        int target = Math.Max(InitialBlocks, Math.Max(1, 2 * inUse));
        if (target >= _capacityBlocks) return false;

        // Live blocks at or above the target move into the lowest free blocks below it.
        var src = new List<long>();
        var dst = new List<long>();
        var lowFree = new Queue<int>(_freeBlocks.Where(b => b < target));
        foreach (var seq in _live.Values)
            for (int i = 0; i < seq.Blocks.Count; i++)
            {
                int from = seq.Blocks[i];
                if (from < target) continue;
                int to = lowFree.Dequeue();   // exists: at most inUse <= target / 2 blocks are live
                for (int r = 0; r < BlockSize; r++)
                {
                    src.Add((long)from * BlockSize + r);
                    dst.Add((long)to * BlockSize + r);
                }
                seq.Blocks[i] = to;
            }
        using (NewDisposeScope())
        {
            var srcRows = tensor(src.ToArray(), ScalarType.Int64);
            var dstRows = tensor(dst.ToArray(), ScalarType.Int64);
            for (int l = 0; l < _numLayers; l++)
            {
                var shrunk = _pools[l].narrow(0, 0, (long)target * BlockSize).clone();
                if (src.Count > 0) shrunk.index_copy_(0, dstRows, _pools[l].index_select(0, srcRows));
                _pools[l].Dispose();
                _pools[l] = shrunk.DetachFromDisposeScope();
            }
        }
        _freeBlocks.Clear();
        var used = new HashSet<int>(_live.Values.SelectMany(s => s.Blocks));
        for (int b = 0; b < target; b++) if (!used.Contains(b)) _freeBlocks.Add(b);
        long freed = (long)(_capacityBlocks - target) * BytesPerBlock;
        _capacityBlocks = target;
        Trims++;
        // malloc_trim walks the whole heap on the inference thread: only worth it when much was freed.
        if (freed >= HeapTrimBytes) HeapTrim.Return();
        return true;
    }

    public long Row(LatentSequence seq, int position) =>
        (long)seq.Blocks[position / BlockSize] * BlockSize + position % BlockSize;

    /// <summary>Rows of positions [start, start + count) of <paramref name="seq"/>.</summary>
    public long[] Rows(LatentSequence seq, int start, int count)
    {
        var rows = new long[count];
        for (int i = 0; i < count; i++) rows[i] = Row(seq, start + i);
        return rows;
    }

    /// <summary>Writes latents [n, latentDim] into layer <paramref name="layer"/> at <paramref name="rows"/> [n].</summary>
    public void Write(int layer, Tensor rows, Tensor latents) =>
        _pools[layer].index_copy_(0, rows, Codec is null ? latents.to(_dtype) : Codec.Encode(latents));

    /// <summary>Reads rows [n] of layer <paramref name="layer"/> -> [n, latentDim] in the compute dtype (8-bit rows decoded).</summary>
    public Tensor Read(int layer, Tensor rows) =>
        Codec is null ? _pools[layer].index_select(0, rows) : Codec.Decode(_pools[layer].index_select(0, rows), _dtype);

    long PoolWidth => Codec?.RowBytes ?? LatentDim;
    ScalarType PoolDtype => Codec is null ? _dtype : ScalarType.Byte;

    void Grow(int extraBlocks)
    {
        int newCapacity = _capacityBlocks + extraBlocks;
        using (NewDisposeScope())
            for (int l = 0; l < _numLayers; l++)
            {
                var grown = zeros((long)newCapacity * BlockSize, PoolWidth, PoolDtype);
                if (_capacityBlocks > 0) grown.narrow(0, 0, (long)_capacityBlocks * BlockSize).copy_(_pools[l]);
                _pools[l].Dispose();
                _pools[l] = grown.DetachFromDisposeScope();
            }
        for (int b = _capacityBlocks; b < newCapacity; b++) _freeBlocks.Add(b);
        _capacityBlocks = newCapacity;
    }

    public void Dispose()
    {
        foreach (var p in _pools) p.Dispose();
    }
}
