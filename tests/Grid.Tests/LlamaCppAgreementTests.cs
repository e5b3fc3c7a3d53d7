using Grid.Benchmarks;
using LLama;
using LLama.Common;
using LLama.Native;
using Xunit;

namespace Grid.Tests;

/// <summary>
/// The benchmark's comparison with llama.cpp is only meaningful if llama.cpp runs the same model: the GGUF export of a
/// golden checkpoint (<see cref="GgufExport"/>), run by llama.cpp itself (LLamaSharp's CPU backend) on the golden
/// prompt ids, must produce the golden greedy tokens (the ones the Python reference and model-core produce) and the
/// golden prompt logits (to 1e-2: llama.cpp is float32 throughout).
/// </summary>
public sealed class LlamaCppAgreementTests
{
    static readonly List<string> NativeLog = new();

    static LlamaCppAgreementTests()
    {
        // Native messages go to a buffer shown on failure, not to the test output.
        NativeLibraryConfig.All.WithLogCallback((_, message) =>
        {
            lock (NativeLog) NativeLog.Add(message.TrimEnd());
        });
    }

    [Fact]
    public void LlamaCppRunsTheExportedGoldenCheckpointWithTheGoldenGreedyTokensAndLogits()
    {
        var expected = Golden.Load("lite_f32", "ids");
        var dir = Directory.CreateTempSubdirectory("grid-gguf-");
        try
        {
            var path = Path.Combine(dir.FullName, "lite_f32.gguf");
            GgufExport.Write(Golden.Dir("lite_f32"), path, _ => { });
            var prompt = expected.PromptIds;
            var generated = expected.GeneratedIds;
            var parameters = new ModelParams(path)
            {
                ContextSize = (uint)(prompt.Length + generated.Length + 8),
                BatchSize = (uint)prompt.Length,
                Threads = 1,
                BatchThreads = 1,
                GpuLayerCount = 0,
                TypeK = GGMLType.GGML_TYPE_F32,
                TypeV = GGMLType.GGML_TYPE_F32,
            };
            using var weights = LLamaWeights.LoadFromFile(parameters);
            using var context = weights.CreateContext(parameters);
            var handle = context.NativeHandle;
            var batch = new LLamaBatch();
            for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
            Assert.True(handle.Decode(batch) == DecodeResult.Ok, Tail());

            var logits = handle.GetLogitsIth(batch.TokenCount - 1).ToArray();
            var golden = expected.LastLogits;
            Assert.Equal(golden.Length, logits.Length);
            var tokens = new List<int> { Argmax(logits) };
            while (tokens.Count < generated.Length)
            {
                batch.Clear();
                batch.Add(tokens[^1], prompt.Length + tokens.Count - 1, LLamaSeqId.Zero, true);
                Assert.True(handle.Decode(batch) == DecodeResult.Ok, Tail());
                tokens.Add(Argmax(handle.GetLogitsIth(0)));
            }
            Assert.Equal(generated, tokens);
            // Not bit-equal: llama.cpp computes RoPE angles and YaRN factors in float32 (Grid and the reference in
            // double), and sums in another order; the prompt logits (|logit| up to ~10.5 here) agree to 1e-2.
            double maxDiff = golden.Zip(logits, (g, l) => Math.Abs(g - l)).Max();
            Assert.True(maxDiff < 1e-2, $"prompt logits differ from the golden ones by up to {maxDiff:E2}");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    static string Tail()
    {
        lock (NativeLog) return string.Join("\n", NativeLog.TakeLast(20));
    }

    static int Argmax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
