using System.Security.Cryptography;
using System.Text;
using Grid.ModelCore.Tokenization;

namespace Grid.Trainer;

/// <summary>One corpus file: its name, size, SHA-256 and tokens (the first <see cref="TrainTokens"/> train, the rest are held out).</summary>
public sealed record CorpusFile(string Name, long Bytes, string Sha256, int[] Tokens, int TrainTokens);

/// <summary>
/// A fixed text corpus: every regular file (symbolic links skipped) of a folder in ordinal name order, each tokenized alone;
/// the first 90% of every file's tokens are training text, the last 10% held out, so both sides see every document.
/// </summary>
public sealed class Corpus
{
    public IReadOnlyList<CorpusFile> Files { get; }

    /// <summary>SHA-256 over the lines "name sha256\n" of every file, in order: one hash for the whole corpus.</summary>
    public string Sha256 { get; }

    public Corpus(string directory, GridTokenizer tokenizer, double heldOutShare = 0.1)
    {
        var files = new List<CorpusFile>();
        foreach (var path in Directory.GetFiles(directory).Order(StringComparer.Ordinal))
        {
            var info = new FileInfo(path);
            if (info.LinkTarget is not null) continue;
            var bytes = File.ReadAllBytes(path);
            var tokens = tokenizer.Encode(Encoding.UTF8.GetString(bytes), addSpecialTokens: false, parseSpecialTokens: false);
            files.Add(new CorpusFile(info.Name, bytes.Length, Convert.ToHexStringLower(SHA256.HashData(bytes)), tokens,
                (int)Math.Round(tokens.Length * (1 - heldOutShare))));
        }
        if (files.Count == 0) throw new InvalidDataException($"no corpus files in {directory}");
        Files = files;
        Sha256 = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Concat(files.Select(f => $"{f.Name} {f.Sha256}\n")))));
    }

    public long TrainTokens => Files.Sum(f => (long)f.TrainTokens);

    /// <summary>A random training window: BOS then <paramref name="length"/> - 1 consecutive tokens from one file's training
    /// part, the file drawn in proportion to its training tokens.</summary>
    public int[] SampleTrain(Random random, int length, int bos)
    {
        long at = random.NextInt64(TrainTokens);
        var file = Files.First(f => (at -= f.TrainTokens) < 0);
        int span = length - 1;
        int start = random.Next(Math.Max(1, file.TrainTokens - span + 1));
        return [bos, .. file.Tokens.AsSpan(start, Math.Min(span, file.TrainTokens - start))];
    }

    /// <summary>Consecutive non-overlapping windows (BOS + <paramref name="length"/> - 1 tokens) of every file's training or
    /// held-out part, in file order; a remainder shorter than a window is dropped.</summary>
    public List<int[]> Windows(bool heldOut, int length, int bos)
    {
        var windows = new List<int[]>();
        int span = length - 1;
        foreach (var f in Files)
        {
            int from = heldOut ? f.TrainTokens : 0, to = heldOut ? f.Tokens.Length : f.TrainTokens;
            for (int start = from; start + span <= to; start += span)
                windows.Add([bos, .. f.Tokens.AsSpan(start, span)]);
        }
        return windows;
    }

    /// <summary>Entropy of the training text's unigram distribution, nats/token: the loss of the best context-free model.</summary>
    public double UnigramEntropy()
    {
        var counts = new Dictionary<int, long>();
        foreach (var f in Files)
            foreach (var t in f.Tokens.AsSpan(0, f.TrainTokens)) counts[t] = counts.GetValueOrDefault(t) + 1;
        double total = counts.Values.Sum();
        return -counts.Values.Sum(n => n / total * Math.Log(n / total));
    }
}
