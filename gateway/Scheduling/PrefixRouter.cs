using Grid.ModelCore.Serving;

namespace Grid.Gateway.Scheduling;

/// <summary>
/// The gateway's approximate picture of what each attention shard's prefix cache holds (as SGLang's cache-aware
/// router keeps one): the chained block hashes (<see cref="Grid.ModelCore.Cache.BlockHash"/>) of the full blocks this
/// gateway's sequences computed or found on each shard, least recently used dropped first once a shard's entries
/// reach its cache budget in blocks. It never asks the shards: it can be wrong (a shard evicted a block, lost its
/// cache with its silo, or holds prefixes another gateway computed), which only makes routing less good, never output
/// wrong (the shard's own lookup decides what is reused). Used on the engine loop only.
/// </summary>
public sealed class PrefixRouter
{
    sealed class ShardIndex
    {
        public readonly Dictionary<UInt128, LinkedListNode<UInt128>> Nodes = new();
        public readonly LinkedList<UInt128> Order = new();   // least recently used first
        public int Capacity = int.MaxValue;
    }

    readonly Dictionary<int, ShardIndex> _shards = new();

    public bool IsEmpty => _shards.Values.All(s => s.Nodes.Count == 0);

    /// <summary>Block hashes remembered for <paramref name="shard"/>.</summary>
    public int Count(int shard) => _shards.TryGetValue(shard, out var s) ? s.Nodes.Count : 0;

    /// <summary>Bounds each shard's entries by its cache budget in blocks (more could not be cached there).</summary>
    public void Resize(IReadOnlyList<ShardBudget> budgets)
    {
        foreach (var b in budgets)
        {
            var s = Index(b.Shard);
            s.Capacity = Math.Max(1, b.TotalBlocks);
            Shrink(s);
        }
    }

    /// <summary>The shard now holds these leading blocks (hashes in chain order): remembered as most recently used.</summary>
    public void Record(int shard, IReadOnlyList<UInt128> hashes)
    {
        if (shard < 0 || hashes.Count == 0) return;
        var s = Index(shard);
        // Last block first, so that within a chain the earlier blocks are the more recently used (dropped last).
        for (int i = hashes.Count - 1; i >= 0; i--)
        {
            if (s.Nodes.TryGetValue(hashes[i], out var node)) s.Order.Remove(node);
            else s.Nodes[hashes[i]] = node = new LinkedListNode<UInt128>(hashes[i]);
            s.Order.AddLast(node);
        }
        Shrink(s);
    }

    /// <summary>How many leading blocks of <paramref name="hashes"/> the shard probably holds.</summary>
    public int Match(int shard, IReadOnlyList<UInt128> hashes)
    {
        if (!_shards.TryGetValue(shard, out var s)) return 0;
        int n = 0;
        while (n < hashes.Count && s.Nodes.ContainsKey(hashes[n])) n++;
        return n;
    }

    ShardIndex Index(int shard) => _shards.TryGetValue(shard, out var s) ? s : _shards[shard] = new ShardIndex();

    static void Shrink(ShardIndex s)
    {
        while (s.Nodes.Count > s.Capacity && s.Order.First is { } oldest)
        {
            s.Order.RemoveFirst();
            s.Nodes.Remove(oldest.Value);
        }
    }
}
