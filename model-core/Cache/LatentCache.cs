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

    /// <summary>Leading full blocks whose prefix hash is known (registered in the prefix index, or shared from it).</summary>
    public int HashedBlocks { get; internal set; }

    /// <summary>The prefix hash of block <see cref="HashedBlocks"/> - 1 (the chain the next full block continues).</summary>
    internal UInt128 ChainHash = BlockHash.Root;

    /// <summary>Positions it took from the prefix cache when it started (<see cref="LatentCache.AttachPrefix"/>).</summary>
    public int CachedPrefix { get; internal set; }
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
/// <para>Prefix caching (<see cref="PrefixCaching"/>, vLLM's automatic prefix caching): every full block of a sequence
/// whose token ids are known is registered under its <see cref="BlockHash"/> (its tokens chained with the previous
/// block's hash). A new sequence starts from the longest chain of registered blocks its tokens hash to
/// (<see cref="AttachPrefix"/>), sharing them: a block is reference-counted and read-only while shared - a sequence
/// only ever writes positions at or after its length, and a shared block is full and before it, so a partial last
/// block is always private and nothing is copied on write. A released block that is registered stays in the cache as
/// evictable (least recently used first, a chain's later blocks before its earlier ones) and is reused on a hit;
/// an allocation takes a free block, grows the pool while under <see cref="MaxBlocks"/>, and only then evicts.
/// Evictable blocks count as free room (<see cref="BlocksInUse"/> excludes them). A trim keeps the most recently
/// used evictable blocks that fit in the shrunken pool and evicts the rest.</para>
/// </summary>
public sealed class LatentCache : IDisposable
{
    readonly int _numLayers;
    readonly ScalarType _dtype;
    readonly SortedSet<int> _freeBlocks = new();   // lowest first, so live blocks stay packed low
    readonly Dictionary<long, LatentSequence> _live = new();
    int[] _refs = [];                                       // per block: sequences holding it (0: free or evictable)
    readonly Dictionary<int, UInt128> _hashOf = new();      // registered blocks: block -> prefix hash
    readonly Dictionary<UInt128, int> _blockOf = new();     // prefix hash -> block
    readonly LinkedList<int> _evictable = new();            // registered blocks no sequence holds, least recently used first
    readonly Dictionary<int, LinkedListNode<int>> _evictableNode = new();
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

    /// <summary>Whether full blocks are registered and shared between sequences with equal prefixes (off: every block is private and freed on release).</summary>
    public bool PrefixCaching
    {
        get => _prefixCaching;
        set
        {
            _prefixCaching = value;
            if (!value) while (_evictable.First is { } oldest) { Evict(oldest.Value); _freeBlocks.Add(oldest.Value); }
        }
    }
    bool _prefixCaching;

    /// <summary>Positions looked up by <see cref="AttachPrefix"/> (vLLM's prefix_cache_queries, in tokens).</summary>
    public long PrefixQueries { get; private set; }
    /// <summary>Positions <see cref="AttachPrefix"/> found in the cache (vLLM's prefix_cache_hits, in tokens).</summary>
    public long PrefixHits { get; private set; }
    /// <summary>Registered blocks evicted (for room, or by a trim).</summary>
    public long Evictions { get; private set; }
    /// <summary>Registered blocks no sequence holds: kept for later hits, free room for allocations.</summary>
    public int CachedBlocks => _evictable.Count;
    /// <summary>Blocks in the prefix index (held or evictable).</summary>
    public int RegisteredBlocks => _hashOf.Count;
    /// <summary>Blocks held by more than one sequence.</summary>
    public int SharedBlocks => _refs.Count(r => r > 1);

    public int LiveSequences => _live.Count;
    /// <summary>Blocks held by live sequences (each counted once however many share it); evictable cached blocks are not in use.</summary>
    public int BlocksInUse => _capacityBlocks - _freeBlocks.Count - _evictable.Count;
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
            int block = Allocate();
            _refs[block] = 1;
            seq.Blocks.Add(block);
        }
        PeakBlocksInUse = Math.Max(PeakBlocksInUse, BlocksInUse);
    }

    /// <summary>Most blocks held at once since the cache was created (or <see cref="ResetPeak"/>).</summary>
    public int PeakBlocksInUse { get; private set; }

    public void ResetPeak() => PeakBlocksInUse = BlocksInUse;

    /// <summary>A block for new positions: a free one, else the pool grows (under the budget), else the least recently used cached block is evicted.</summary>
    int Allocate()
    {
        if (_freeBlocks.Count == 0)
        {
            if (_capacityBlocks < MaxBlocks) Grow(Math.Min(_capacityBlocks, MaxBlocks - _capacityBlocks));
            else if (_evictable.First is { } oldest)
            {
                Evict(oldest.Value);
                return oldest.Value;
            }
            else throw new InvalidOperationException($"the latent cache is full: {MaxBlocks} blocks of {BlockSize} tokens are in use");
        }
        int block = _freeBlocks.Min;
        _freeBlocks.Remove(block);
        return block;
    }

    /// <summary>Drops an evictable block from the prefix index (the caller reuses or frees it).</summary>
    void Evict(int block)
    {
        _evictable.Remove(_evictableNode[block]);
        _evictableNode.Remove(block);
        _blockOf.Remove(_hashOf[block]);
        _hashOf.Remove(block);
        Evictions++;
    }

    /// <summary>
    /// Starts the new (empty) sequence from the longest chain of cached full blocks that <paramref name="tokens"/>
    /// begin with, within the first <paramref name="maxTokens"/> positions (a prompt keeps at least its last token to
    /// compute: its logits are needed), sharing those blocks. Returns the positions it now holds (a multiple of
    /// <see cref="BlockSize"/>; 0 when prefix caching is off or nothing matched). Its token history is those tokens.
    /// </summary>
    public int AttachPrefix(LatentSequence seq, ReadOnlySpan<int> tokens, int maxTokens)
    {
        if (seq.Released) throw new InvalidOperationException($"latent sequence {seq.Id} was released");
        if (seq.Length != 0 || seq.Blocks.Count != 0) throw new InvalidOperationException($"latent sequence {seq.Id} already holds positions: only a new sequence attaches a prefix");
        if (!PrefixCaching) return 0;
        PrefixQueries += tokens.Length;
        int limit = Math.Clamp(maxTokens, 0, tokens.Length);
        var chain = BlockHash.Root;
        for (int b = 0; (b + 1) * BlockSize <= limit; b++)
        {
            var hash = BlockHash.Next(chain, tokens.Slice(b * BlockSize, BlockSize));
            if (!_blockOf.TryGetValue(hash, out int block)) break;
            if (_refs[block] == 0)
            {
                _evictable.Remove(_evictableNode[block]);
                _evictableNode.Remove(block);
            }
            _refs[block]++;
            seq.Blocks.Add(block);
            chain = hash;
        }
        int matched = seq.Blocks.Count * BlockSize;
        seq.Length = matched;
        seq.HashedBlocks = seq.Blocks.Count;
        seq.ChainHash = chain;
        seq.CachedPrefix = matched;
        seq.TokenIds.Clear();
        seq.TokenIds.AddRange(tokens[..matched]);
        PrefixHits += matched;
        return matched;
    }

    /// <summary>Marks positions [0, length) as filled (after a step wrote them in every layer).</summary>
    public void Commit(LatentSequence seq, int length)
    {
        if (length > seq.Blocks.Count * BlockSize) throw new InvalidOperationException("commit past the reserved blocks");
        if (length < seq.HashedBlocks * BlockSize)
            throw new InvalidOperationException($"latent sequence {seq.Id}: a commit back to position {length} would rewrite its full blocks (they may be shared)");
        seq.Length = length;
    }

    /// <summary>
    /// Marks positions [start, start + tokens.Length) as filled with <paramref name="tokens"/> (after a step wrote them in
    /// every layer); with prefix caching, the full blocks this completes join the prefix index.
    /// </summary>
    public void Commit(LatentSequence seq, int start, ReadOnlySpan<int> tokens)
    {
        Commit(seq, start + tokens.Length);
        if (seq.TokenIds.Count > start) seq.TokenIds.RemoveRange(start, seq.TokenIds.Count - start);
        if (seq.TokenIds.Count == start) seq.TokenIds.AddRange(tokens);
        else seq.TokenIds.Clear();   // positions before start were committed without ids: the history is unknown
        if (PrefixCaching) Register(seq);
    }

    /// <summary>Hashes the sequence's newly full blocks (when its token ids are known) and indexes those whose prefix is not cached yet.</summary>
    void Register(LatentSequence seq)
    {
        if (seq.TokenIds.Count != seq.Length) return;
        var ids = seq.Tokens;
        while ((seq.HashedBlocks + 1) * BlockSize <= seq.Length)
        {
            int b = seq.HashedBlocks;
            var hash = BlockHash.Next(seq.ChainHash, ids.Slice(b * BlockSize, BlockSize));
            int block = seq.Blocks[b];
            // The same prefix computed twice (two sequences prefilled it at once): the first stays indexed, this copy stays private.
            if (!_blockOf.ContainsKey(hash) && !_hashOf.ContainsKey(block))
            {
                _blockOf[hash] = block;
                _hashOf[block] = hash;
            }
            seq.ChainHash = hash;
            seq.HashedBlocks = b + 1;
        }
    }

    /// <summary>
    /// Lets go of the sequence's blocks: a block no other sequence holds is freed, or, when it is in the prefix index,
    /// kept as evictable cache. Idempotent.
    /// </summary>
    public void Release(LatentSequence seq)
    {
        if (seq.Released) return;
        seq.Released = true;
        // Last block first: within a chain the later blocks become the older entries, so eviction takes a chain from its end.
        for (int i = seq.Blocks.Count - 1; i >= 0; i--) Drop(seq.Blocks[i]);
        seq.Blocks.Clear();
        seq.HashedBlocks = 0;
        seq.ChainHash = BlockHash.Root;
        seq.TokenIds.Clear();
        seq.Length = 0;
        _live.Remove(seq.Id);
        if (AutoTrim) Trim();
    }

    /// <summary>One sequence lets go of a block: freed when no other holds it, or kept as evictable cache when indexed.</summary>
    void Drop(int block)
    {
        if (--_refs[block] > 0) return;
        if (_hashOf.ContainsKey(block) && PrefixCaching) _evictableNode[block] = _evictable.AddLast(block);
        else
        {
            if (_hashOf.Remove(block, out var hash)) _blockOf.Remove(hash);
            _freeBlocks.Add(block);
        }
    }

    /// <summary>
    /// Whether <see cref="Rewind"/> can take the sequence back to <paramref name="position"/> (0 &lt; position &lt;=
    /// its length): its token ids must be known, and the positions to rewrite must not lie in a full block another
    /// sequence shares (a block is rewritten only while this sequence alone holds it).
    /// </summary>
    public bool CanRewind(LatentSequence seq, int position)
    {
        if (seq.Released || position <= 0 || position > seq.Length || seq.TokenIds.Count != seq.Length) return false;
        int b = position / BlockSize;
        return position % BlockSize == 0 || b >= seq.HashedBlocks || _refs[seq.Blocks[b]] == 1;
    }

    /// <summary>
    /// Takes the sequence back to its first <paramref name="position"/> positions, as if the steps past them had not
    /// run (a step that one shard committed and the gateway never saw, run again): blocks wholly past it are let go
    /// (indexed ones stay as evictable cache), the block it ends in leaves the prefix index when it was full (its
    /// rows past the position will be written again), and the token history is cut to match.
    /// </summary>
    public void Rewind(LatentSequence seq, int position)
    {
        if (!CanRewind(seq, position))
            throw new InvalidOperationException($"latent sequence {seq.Id} cannot be rewound from {seq.Length} to position {position}");
        int keep = (position + BlockSize - 1) / BlockSize, full = position / BlockSize;
        for (int i = seq.Blocks.Count - 1; i >= keep; i--) Drop(seq.Blocks[i]);
        seq.Blocks.RemoveRange(keep, seq.Blocks.Count - keep);
        if (seq.HashedBlocks > full)
        {
            // The block the position ends in (when partial now) is rewritten: out of the index, the chain one block shorter.
            if (keep > full && _hashOf.Remove(seq.Blocks[full], out var hash)) _blockOf.Remove(hash);
            var chain = BlockHash.Root;
            var ids = seq.Tokens;
            for (int b = 0; b < full; b++) chain = BlockHash.Next(chain, ids.Slice(b * BlockSize, BlockSize));
            seq.HashedBlocks = full;
            seq.ChainHash = chain;
        }
        seq.TokenIds.RemoveRange(position, seq.TokenIds.Count - position);
        seq.Length = position;
        seq.CachedPrefix = Math.Min(seq.CachedPrefix, position);
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
    /// Gives memory back when at most a quarter of the pool is held by sequences and no batch is open: the pools shrink
    /// to twice the blocks in use (at least <see cref="InitialBlocks"/>), held blocks above that moving into free ones
    /// below it (their sequences' latents unchanged, shared blocks moved once; when no free block is left below it, a
    /// held block takes the place of the least recently used cached one). Then the cached blocks above the new size,
    /// most recently used first, move into free places below it or the places of cached blocks used less recently (those
    /// are evicted); the rest are evicted. So the pool keeps the most recently used prefixes that fit. Returns whether
    /// the pools shrank.
    /// </summary>
    public bool Trim()
    {
        if (_openBatches > 0 || _capacityBlocks <= InitialBlocks) return false;
        int inUse = BlocksInUse;
        if ((long)inUse * 4 > _capacityBlocks) return false;
        int target = Math.Max(InitialBlocks, Math.Max(1, 2 * inUse));
        if (target >= _capacityBlocks) return false;

        // Slots below the target: free ones first, then cached ones (least recently used first), which held blocks may take.
        var slots = new Queue<int>(_freeBlocks.Where(b => b < target).Concat(_evictable.Where(b => b < target)));
        var moved = new Dictionary<int, int>();
        var src = new List<long>();
        var dst = new List<long>();
        void Move(int from, int to)
        {
            moved[from] = to;
            for (int r = 0; r < BlockSize; r++)
            {
                src.Add((long)from * BlockSize + r);
                dst.Add((long)to * BlockSize + r);
            }
        }
        foreach (var seq in _live.Values)
            for (int i = 0; i < seq.Blocks.Count; i++)
            {
                int from = seq.Blocks[i];
                if (from < target) continue;
                if (!moved.TryGetValue(from, out int to))
                {
                    to = slots.Dequeue();   // exists: at most inUse <= target / 2 blocks are held
                    if (_evictableNode.ContainsKey(to)) Evict(to);
                    Move(from, to);
                    _refs[to] = _refs[from];
                    if (_hashOf.Remove(from, out var hash))
                    {
                        _hashOf[to] = hash;
                        _blockOf[hash] = to;
                    }
                }
                seq.Blocks[i] = to;
            }
        // Cached blocks above the target, most recently used first: each takes a free slot, or the slot of a cached
        // block used less recently than itself (evicted); what finds no slot is evicted.
        var rank = new Dictionary<int, int>();
        foreach (var b in _evictable) rank[b] = rank.Count;   // 0: least recently used
        var above = new List<LinkedListNode<int>>();
        for (var n = _evictable.Last; n is not null; n = n.Previous) if (n.Value >= target) above.Add(n);
        foreach (var node in above)
        {
            int from = node.Value;
            while (slots.Count > 0 && _evictableNode.ContainsKey(slots.Peek()) && rank[slots.Peek()] > rank[from])
                slots.Dequeue();   // a cached block used more recently keeps its place
            if (slots.Count == 0)
            {
                Evict(from);
                continue;
            }
            int to = slots.Dequeue();
            if (_evictableNode.ContainsKey(to)) Evict(to);
            Move(from, to);
            var hash = _hashOf[from];
            _hashOf.Remove(from);
            _hashOf[to] = hash;
            _blockOf[hash] = to;
            _evictableNode.Remove(from);
            node.Value = to;
            _evictableNode[to] = node;
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
        Array.Resize(ref _refs, target);   // moved blocks' counts were copied to their new places
        var held = new HashSet<int>(_live.Values.SelectMany(s => s.Blocks));
        _freeBlocks.Clear();
        for (int b = 0; b < target; b++) if (!held.Contains(b) && !_evictableNode.ContainsKey(b)) _freeBlocks.Add(b);
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

    /// <summary>
    /// Writes latents [n, latentDim] at <paramref name="rowIds"/> (the same rows as <paramref name="rows"/>): float32 rows
    /// without a codec are copied in place row by row (the same bytes as <see cref="Write(int, Tensor, Tensor)"/>, no
    /// libtorch call), anything else goes through it.
    /// </summary>
    public unsafe void Write(int layer, Tensor rows, long[] rowIds, Tensor latents)
    {
        if (Float32Pool(layer) is not { } pool || latents.dtype != ScalarType.Float32 || latents.shape[0] != rowIds.Length || latents.shape[1] != LatentDim)
        {
            Write(layer, rows, latents);
            return;
        }
        var source = latents.contiguous();
        float* src = Kernels.TensorMemory.Pointer<float>(source), dst = Kernels.TensorMemory.Pointer<float>(pool);
        long capacity = pool.shape[0], bytes = (long)LatentDim * sizeof(float);
        for (int i = 0; i < rowIds.Length; i++)
        {
            if ((ulong)rowIds[i] >= (ulong)capacity) throw new ArgumentOutOfRangeException(nameof(rowIds), $"row {rowIds[i]} is outside the pool");
            Buffer.MemoryCopy(src + (long)i * LatentDim, dst + rowIds[i] * LatentDim, bytes, bytes);
        }
    }

    /// <summary>Reads rows [n] of layer <paramref name="layer"/> -> [n, latentDim] in the compute dtype (8-bit rows decoded).</summary>
    public Tensor Read(int layer, Tensor rows) =>
        Codec is null ? _pools[layer].index_select(0, rows) : Codec.Decode(_pools[layer].index_select(0, rows), _dtype);

    /// <summary>
    /// Layer <paramref name="layer"/>'s pool [capacity rows, latentDim] when rows hold float32 latents as they are (no
    /// codec), else null: the decode kernels read and write rows in place. Valid while a step's batch is open
    /// (<see cref="BeginBatch"/>: rows are reserved before it and no trim moves or resizes the pool until it closes).
    /// </summary>
    public Tensor? Float32Pool(int layer) => Codec is null && _dtype == ScalarType.Float32 ? _pools[layer] : null;

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
        Array.Resize(ref _refs, newCapacity);
        _capacityBlocks = newCapacity;
    }

    public void Dispose()
    {
        foreach (var p in _pools) p.Dispose();
    }
}
