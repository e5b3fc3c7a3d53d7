using Grid.ModelCore.Model;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.ModelCore.Evaluation;

/// <summary>
/// How far a model option (8-bit weights, an 8-bit latent cache) moves the next-token distributions from a
/// reference (float32), teacher-forced: both models read the same token sequences and every position's distribution
/// is compared. <see cref="Top1Agreement"/>: share of positions with the same most likely token;
/// <see cref="MeanKl"/>: mean KL(reference ‖ candidate) in nats per token; <see cref="MaxTop5LogprobDiff"/>: the
/// largest |logprob difference| over the reference's top-5 tokens at any position.
/// </summary>
public sealed record ComparisonResult(int Positions, double Top1Agreement, double MeanKl, double MaxKl, double MaxTop5LogprobDiff);

public static class TeacherForcedComparison
{
    /// <summary>
    /// Runs every sequence through both models: the first <paramref name="prefill"/> tokens as one chunk (all its
    /// logits), then one token per step for all sequences together (the decode path: small-batch kernels, the
    /// absorbed attention over the cache). Runs on the calling thread, which must be allowed to use TorchSharp.
    /// </summary>
    public static ComparisonResult Compare(DeepseekV2Model reference, DeepseekV2Model candidate, IReadOnlyList<int[]> sequences, int prefill = 1)
    {
        if (sequences.Count == 0 || sequences.Any(s => s.Length < prefill + 1))
            throw new ArgumentException($"every sequence needs more than {prefill} tokens");
        using var noGrad = no_grad();
        var referenceLogits = Logits(reference, sequences, prefill);
        var candidateLogits = Logits(candidate, sequences, prefill);
        try
        {
            using var scope = NewDisposeScope();
            var lpRef = log_softmax(cat(referenceLogits, 0).to(ScalarType.Float64), -1);
            var lpCand = log_softmax(cat(candidateLogits, 0).to(ScalarType.Float64), -1);
            long positions = lpRef.shape[0];
            var kl = (lpRef.exp() * (lpRef - lpCand)).sum(-1);                          // [P]
            var agree = lpRef.argmax(-1).eq(lpCand.argmax(-1)).to(ScalarType.Float64).mean();
            var top5 = lpRef.topk(5, -1).indexes;                                         // [P, 5]
            var diff = (lpRef.gather(-1, top5) - lpCand.gather(-1, top5)).abs().max();
            return new ComparisonResult((int)positions, agree.item<double>(), kl.mean().item<double>(), kl.max().item<double>(), diff.item<double>());
        }
        finally
        {
            foreach (var t in referenceLogits) t.Dispose();
            foreach (var t in candidateLogits) t.Dispose();
        }
    }

    /// <summary>Logits [positions, V] for every position of every sequence that has a next token, in sequence order.</summary>
    static List<Tensor> Logits(DeepseekV2Model model, IReadOnlyList<int[]> sequences, int prefill)
    {
        var cache = model.Cache ?? throw new InvalidOperationException("the model has no latent cache");
        var seqs = sequences.Select(_ => cache.Create()).ToArray();
        var perSequence = sequences.Select(_ => new List<Tensor>()).ToArray();
        try
        {
            for (int i = 0; i < seqs.Length; i++)
                using (var o = model.Forward([new SequenceChunk(seqs[i], sequences[i][..prefill], AllLogits: true)]))
                    perSequence[i].Add(o.Logits.clone());
            int longest = sequences.Max(s => s.Length);
            for (int pos = prefill; pos < longest - 1; pos++)
            {
                var active = Enumerable.Range(0, seqs.Length).Where(i => pos < sequences[i].Length - 1).ToArray();
                using var o = model.Forward(active.Select(i => new SequenceChunk(seqs[i], [sequences[i][pos]])).ToList());
                for (int r = 0; r < active.Length; r++) perSequence[active[r]].Add(o.Logits.narrow(0, r, 1).clone());
            }
            return perSequence.Select(parts =>
            {
                using var scope = NewDisposeScope();
                var joined = cat(parts, 0).DetachFromDisposeScope();
                foreach (var p in parts) p.Dispose();
                return joined;
            }).ToList();
        }
        finally
        {
            foreach (var s in seqs) cache.Release(s);
        }
    }
}
