using Grid.ModelCore.Cache;
using static TorchSharp.torch;

namespace Grid.ModelCore.Model;

/// <summary>
/// New tokens of one sequence for one forward step; they go at positions [Sequence.Length, +Tokens.Length).
/// Logits are computed for the last token, for every token (<see cref="AllLogits"/>) or for none (<see cref="NoLogits"/>: a prefill chunk that neither samples nor scores).
/// </summary>
public sealed record SequenceChunk(LatentSequence Sequence, int[] Tokens, bool AllLogits = false)
{
    public bool NoLogits { get; init; }
}

/// <summary>
/// The layout of one forward step over several sequences: the new tokens of every chunk concatenated
/// in chunk order as rows of the hidden state, their positions, where their latents go in the cache, and
/// the gather index for the single-token (decode) chunks. Built once per step, used by every layer.
/// Its tensors belong to no dispose scope: dispose the batch at the end of the step.
/// </summary>
public sealed class StepBatch : IDisposable
{
    public IReadOnlyList<SequenceChunk> Chunks { get; }
    public int[] Offsets { get; }        // first row of each chunk
    public int[] Starts { get; }         // first position of each chunk
    public int Rows { get; }
    public Tensor Positions { get; }     // [N]
    public long MaxPosition { get; }
    public Tensor WriteRows { get; }     // [N] cache rows of the new tokens
    public long[] WriteRowIds { get; }   // the same rows as numbers
    public Tensor?[] ChunkCacheRows { get; } // per multi-token chunk: cache rows of positions [0, start + n)

    // Single-token chunks, attended together in the absorbed form.
    public int[] DecodeChunks { get; }
    public Tensor? DecodeRows { get; }   // [B] hidden rows
    public Tensor? DecodeGather { get; } // [B * Tmax] cache rows, padded
    public long[] DecodeGatherRows { get; } = []; // the same rows as numbers (padding rows 0)
    public Tensor? DecodeMaskedOut { get; } // [B, 1, Tmax] true at padding positions; null when every sequence fills Tmax
    public long DecodeTmax { get; }
    /// <summary>[B] cached positions of each decode sequence once this step's token is written (its position + 1).</summary>
    public int[] DecodeLengths { get; } = [];
    /// <summary>Every chunk is a single-token decode chunk: hidden rows and decode rows coincide (0..B-1), so attention needs no scatter.</summary>
    public bool AllDecode { get; }

    public StepBatch(LatentCache cache, IReadOnlyList<SequenceChunk> chunks, AttentionMode mode)
    {
        Chunks = chunks;
        Offsets = new int[chunks.Count];
        Starts = new int[chunks.Count];
        ChunkCacheRows = new Tensor?[chunks.Count];
        var positions = new List<long>();
        var writeRows = new List<long>();
        var decode = new List<int>();
        int row = 0;
        for (int i = 0; i < chunks.Count; i++)
        {
            var (seq, tokens, _) = chunks[i];
            if (tokens.Length == 0) throw new ArgumentException("a chunk needs at least one token");
            int start = seq.Length, end = start + tokens.Length;
            cache.Reserve(seq, end);
            Offsets[i] = row;
            Starts[i] = start;
            for (int p = start; p < end; p++) { positions.Add(p); writeRows.Add(cache.Row(seq, p)); }
            if (tokens.Length == 1 && mode != AttentionMode.Naive) decode.Add(i);
            else ChunkCacheRows[i] = Keep(tensor(cache.Rows(seq, 0, end), ScalarType.Int64));
            row += tokens.Length;
        }
        Rows = row;
        Positions = Keep(tensor(positions.ToArray(), ScalarType.Int64));
        MaxPosition = positions.Count == 0 ? 0 : positions.Max();
        WriteRowIds = writeRows.ToArray();
        WriteRows = Keep(tensor(WriteRowIds, ScalarType.Int64));
        DecodeChunks = decode.ToArray();
        if (decode.Count > 0)
        {
            long tmax = decode.Max(i => Starts[i] + 1);
            var gather = new long[decode.Count * tmax];
            var maskedOut = new bool[decode.Count * tmax];
            bool padded = false;
            for (int b = 0; b < decode.Count; b++)
            {
                var seq = chunks[decode[b]].Sequence;
                int length = Starts[decode[b]] + 1;
                for (int t = 0; t < length; t++) gather[b * tmax + t] = cache.Row(seq, t);
                for (long t = length; t < tmax; t++) { maskedOut[b * tmax + t] = true; padded = true; }
            }
            DecodeTmax = tmax;
            DecodeLengths = decode.Select(i => Starts[i] + 1).ToArray();
            DecodeRows = Keep(tensor(decode.Select(i => (long)Offsets[i]).ToArray(), ScalarType.Int64));
            DecodeGatherRows = gather;
            DecodeGather = Keep(tensor(gather, ScalarType.Int64));
            if (padded) DecodeMaskedOut = Keep(tensor(maskedOut, [decode.Count, 1, tmax]));
            AllDecode = decode.Count == chunks.Count;
        }
        _cache = cache;
        cache.BeginBatch();   // the rows above stay valid: no trim moves blocks until Dispose
    }

    LatentCache? _cache;

    readonly List<Tensor> _owned = new();
    (Tensor Cos, Tensor Sin)? _rotary;

    /// <summary>The rows' rotary cos and signed sin [N, 1, rope], gathered on first use and shared by every layer of the step.</summary>
    public (Tensor Cos, Tensor Sin) Rotary(YarnRope rope)
    {
        if (_rotary is null)
        {
            var (cos, sin) = rope.Table(Positions, MaxPosition);
            _rotary = (Keep(cos), Keep(sin));
        }
        return _rotary.Value;
    }

    Tensor Keep(Tensor t)
    {
        _owned.Add(t.DetachFromDisposeScope());
        return t;
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
        var cache = _cache;
        _cache = null;
        cache?.EndBatch();
    }

    /// <summary>Rows whose logits the caller wants: the last row of each chunk, all rows of AllLogits chunks, none of NoLogits chunks.</summary>
    public long[] LogitRows()
    {
        var rows = new List<long>();
        for (int i = 0; i < Chunks.Count; i++)
        {
            int n = Chunks[i].Tokens.Length;
            if (Chunks[i].NoLogits) continue;
            if (Chunks[i].AllLogits) for (int r = 0; r < n; r++) rows.Add(Offsets[i] + r);
            else rows.Add(Offsets[i] + n - 1);
        }
        return rows.ToArray();
    }

    /// <summary>After every layer wrote its latents: the sequences now hold the new positions.</summary>
    public void Commit(LatentCache cache)
    {
        for (int i = 0; i < Chunks.Count; i++)
            cache.Commit(Chunks[i].Sequence, Starts[i], Chunks[i].Tokens);
    }
}
