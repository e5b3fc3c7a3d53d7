using Grid.ModelCore.Cache;
using Grid.ModelCore.Evaluation;
using Grid.ModelCore.Kernels;
using Grid.ModelCore.Model;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace Grid.Tests.Quantization;

public class AccuracyDiagnostics(ITestOutputHelper output)
{
    static List<int[]> Sequences(string checkpoint) =>
        Golden.Prompts.Select(p => Golden.Load(checkpoint, p)).Select(e => e.PromptIds.Concat(e.GeneratedIds).ToArray()).ToList();

    static string DirOf(string name) => name.StartsWith("/") ? name : Golden.Dir(name);

    [Theory]
    [InlineData("full_f32")]
    [InlineData("lite_f32")]
    public void Ablation(string checkpoint)
    {
        using var noGrad = no_grad();
        using var reference = DeepseekV2Model.Load(DirOf(checkpoint));
        var sequences = Sequences(checkpoint);
        void Log(string line) { File.AppendAllText("/tmp/acc-diag.txt", line + "\n"); output.WriteLine(line); }
        var filters = new (string, Func<string, bool>?)[]
        {
            ("all", null),
            ("routed experts", n => n.Contains(".mlp.experts.")),
            ("attention", n => n.Contains("self_attn")),
            ("shared experts", n => n.Contains("shared_experts")),
            ("dense mlp", n => n.Contains(".mlp.") && !n.Contains("experts")),
        };
        void One(string label, ModelLoadOptions o, bool flips)
        {
            using var cand = DeepseekV2Model.Load(DirOf(checkpoint), o);
            var r = TeacherForcedComparison.Compare(reference, cand, sequences, prefill: sequences.Min(s => s.Length) / 2);
            var line = $"{checkpoint} {label,-28}: KL {r.MeanKl:E2} top1 {r.Top1Agreement:P1} maxKL {r.MaxKl:E2}";
            if (flips)
            {
                var (flipShare, klFlip, klNoFlip, nFlip) = Flips(reference, cand, sequences);
                line += $" | prefill: routing flips {flipShare:P2} of (token,layer); {nFlip} positions with a flip: KL {klFlip:E2}, without: {klNoFlip:E2}";
            }
            Log(line);
        }
        if (checkpoint == "lite_f32")
        {
            foreach (var block in new[] { 128, 32 })
            {
                QuantizedMatrix.Int8BlockColumns = block;
                One($"int8/{block} all", new ModelLoadOptions { Quantization = WeightQuantization.Int8 }, flips: true);
            }
            QuantizedMatrix.Int8BlockColumns = QuantizedMatrix.DefaultInt8BlockColumns;
            One("kv int8", new ModelLoadOptions { KvCacheDtype = KvCacheDtype.Int8 }, flips: true);
            One("fp8 all", new ModelLoadOptions { Quantization = WeightQuantization.Fp8 }, flips: true);
            return;
        }
        foreach (var block in new[] { 128, 64, 32 })
        {
            QuantizedMatrix.Int8BlockColumns = block;
            One($"int8/{block} all", new ModelLoadOptions { Quantization = WeightQuantization.Int8 }, flips: true);
        }
        QuantizedMatrix.Int8BlockColumns = 128;
        foreach (var (name, f) in filters.Skip(1))
            One($"int8/128 {name}", new ModelLoadOptions { Quantization = WeightQuantization.Int8, QuantizeOnly = f }, flips: true);
        QuantizedMatrix.Int8BlockColumns = QuantizedMatrix.DefaultInt8BlockColumns;
        One("kv int8", new ModelLoadOptions { KvCacheDtype = KvCacheDtype.Int8 }, flips: true);
        One("fp8 all", new ModelLoadOptions { Quantization = WeightQuantization.Fp8 }, flips: true);
        One("kv fp8", new ModelLoadOptions { KvCacheDtype = KvCacheDtype.Fp8 }, flips: false);
    }

    /// <summary>Prefill of each whole sequence with routing kept: share of (token, MoE layer) whose expert set differs, and mean KL at positions with / without any flip.</summary>
    static (double, double, double, int) Flips(DeepseekV2Model reference, DeepseekV2Model cand, List<int[]> sequences)
    {
        long flips = 0, total = 0;
        var klFlip = new List<double>();
        var klNo = new List<double>();
        foreach (var s in sequences)
        {
            var seqA = reference.Cache!.Create();
            var seqB = cand.Cache!.Create();
            using var a = reference.Forward([new SequenceChunk(seqA, s, AllLogits: true)], keepRouting: true);
            using var b = cand.Forward([new SequenceChunk(seqB, s, AllLogits: true)], keepRouting: true);
            reference.Cache.Release(seqA);
            cand.Cache.Release(seqB);
            var flipped = new bool[s.Length];
            foreach (var (layer, ra) in a.Routing!)
            {
                var rb = b.Routing![layer];
                for (int t = 0; t < ra.Tokens; t++)
                {
                    var ea = Enumerable.Range(0, ra.TopK).Select(k => ra.Expert(t, k)).ToHashSet();
                    var eb = Enumerable.Range(0, rb.TopK).Select(k => rb.Expert(t, k)).ToHashSet();
                    total++;
                    if (!ea.SetEquals(eb)) { flips++; flipped[t] = true; }
                }
            }
            using var scope = NewDisposeScope();
            var la = log_softmax(a.Logits.to(ScalarType.Float64), -1);
            var lb = log_softmax(b.Logits.to(ScalarType.Float64), -1);
            var kl = (la.exp() * (la - lb)).sum(-1).data<double>().ToArray();
            for (int t = 0; t < kl.Length; t++) (flipped[t] ? klFlip : klNo).Add(kl[t]);
        }
        return ((double)flips / total, klFlip.Count > 0 ? klFlip.Average() : 0, klNo.Count > 0 ? klNo.Average() : 0, klFlip.Count);
    }
}
