using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.ModelCore.Tokenization;
using Grid.ModelCore.Weights;
using Grid.Trainer;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

// Trains a DeepSeek-V2 model with a given checkpoint's config.json and tokenizer (default: the lite_f32 golden) as a
// byte-pair LM on a fixed text corpus, and writes it as a Hugging Face checkpoint (float32) with the held-out windows
// and the losses it measured (heldout.json, training.json). See tests/fixtures/trained_lite/README.md.
var options = TrainerOptions.Parse(args);
set_num_threads(options.Threads);
manual_seed(options.Seed);
var random = new Random(options.Seed);

using var tokenizer = GridTokenizer.Load(options.Like);
int bos = tokenizer.BosId ?? throw new InvalidDataException("the tokenizer has no BOS token");
var corpus = new Corpus(options.CorpusDir, tokenizer);
var heldOut = corpus.Windows(heldOut: true, options.SequenceLength, bos);
var trainWindows = corpus.Windows(heldOut: false, options.SequenceLength, bos);
double unigram = corpus.UnigramEntropy();
Console.WriteLine($"corpus {options.CorpusDir}: {corpus.Files.Count} files, {corpus.Files.Sum(f => f.Bytes)} bytes, " +
    $"{corpus.Files.Sum(f => f.Tokens.Length)} tokens ({corpus.TrainTokens} train, {heldOut.Count} held-out windows), sha256 {corpus.Sha256}");
Console.WriteLine($"unigram entropy of the training tokens: {unigram:F3} nats/token");

using var model = DeepseekV2Lm.Initialize(Path.Combine(options.Like, "config.json"), options.InitializerRange, options.SequenceLength);
var matrices = model.Parameters.Values.Where(p => p.dim() >= 2).ToList();
var gains = model.Parameters.Values.Where(p => p.dim() < 2).ToList();
long parameterCount = model.Parameters.Values.Sum(p => p.numel());
Console.WriteLine($"{parameterCount} parameters; {options.Steps} steps of {options.Batch} x {options.SequenceLength} tokens, AdamW lr {options.LearningRate}, seed {options.Seed}, {options.Threads} thread(s)");
var optimizer = optim.AdamW([
    new TorchSharp.Modules.AdamW.ParamGroup(matrices, new TorchSharp.Modules.AdamW.Options { LearningRate = options.LearningRate, weight_decay = options.WeightDecay }),
    new TorchSharp.Modules.AdamW.ParamGroup(gains, new TorchSharp.Modules.AdamW.Options { LearningRate = options.LearningRate, weight_decay = 0 }),
], options.LearningRate, beta1: 0.9, beta2: 0.95);

var curve = new JsonArray();
var clock = Stopwatch.StartNew();
double recent = 0;
int recentSteps = 0;
for (int step = 1; step <= options.Steps; step++)
{
    double lr = options.LearningRate * Schedule(step, options.Steps, options.WarmupSteps, options.MinLearningRateRatio);
    foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
    using (var scope = NewDisposeScope())
    {
        var batch = Enumerable.Range(0, options.Batch).Select(_ => corpus.SampleTrain(random, options.SequenceLength, bos)).ToList();
        var ids = Batch(batch);
        var output = model.Forward(ids);
        var lm = NextTokenLoss(output.Logits, ids);
        var loss = lm + output.BalanceLoss;
        optimizer.zero_grad();
        loss.backward();
        nn.utils.clip_grad_norm_(model.Parameters.Values, options.ClipNorm);
        optimizer.step();
        recent += lm.item<float>();
        recentSteps++;
        if (step % options.LogEvery == 0 || step == options.Steps)
        {
            double tokensPerSecond = (double)step * options.Batch * options.SequenceLength / clock.Elapsed.TotalSeconds;
            var line = $"step {step}/{options.Steps}  train loss {recent / recentSteps:F4}  balance {output.BalanceLoss.item<float>():F5}  lr {lr:E2}  {tokensPerSecond:F0} tok/s";
            var point = new JsonObject { ["step"] = step, ["train_loss"] = Math.Round(recent / recentSteps, 4) };
            if (step % options.EvalEvery == 0 || step == options.Steps)
            {
                double h = Evaluate(model, heldOut);
                line += $"  held-out {h:F4}";
                point["heldout_loss"] = Math.Round(h, 4);
            }
            Console.WriteLine(line);
            curve.Add(point);
            recent = 0;
            recentSteps = 0;
        }
    }
}
double heldOutLoss = Evaluate(model, heldOut), trainLoss = Evaluate(model, trainWindows);
Console.WriteLine($"final: train {trainLoss:F4}, held-out {heldOutLoss:F4} nats/token (unigram entropy {unigram:F3}); {clock.Elapsed.TotalMinutes:F1} min");

Directory.CreateDirectory(options.Out);
SafetensorsWriter.Write(options.Out, model.Tensors(), StorageDtype.F32);
foreach (var name in new[] { "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
    File.Copy(Path.Combine(options.Like, name), Path.Combine(options.Out, name), overwrite: true);
var indented = new JsonSerializerOptions { WriteIndented = true };
File.WriteAllText(Path.Combine(options.Out, "training.json"), new JsonObject
{
    ["command"] = "dotnet run -c Release --project tests/Grid.Trainer -- " + string.Join(' ', args),
    ["options"] = JsonSerializer.SerializeToNode(options),
    ["parameters"] = parameterCount,
    ["corpus"] = new JsonObject
    {
        ["directory"] = options.CorpusDir,
        ["sha256"] = corpus.Sha256,
        ["split"] = "per file: first 90% of its tokens train, last 10% held out",
        ["files"] = new JsonArray(corpus.Files.Select(f => (JsonNode)new JsonObject
        {
            ["name"] = f.Name, ["bytes"] = f.Bytes, ["sha256"] = f.Sha256, ["tokens"] = f.Tokens.Length, ["train_tokens"] = f.TrainTokens,
        }).ToArray()),
    },
    ["unigram_entropy"] = Math.Round(unigram, 4),
    ["final_train_loss"] = trainLoss,
    ["final_heldout_loss"] = heldOutLoss,
    ["minutes"] = Math.Round(clock.Elapsed.TotalMinutes, 1),
    ["loss_curve"] = curve,
}.ToJsonString(indented));
File.WriteAllText(Path.Combine(options.Out, "heldout.json"), new JsonObject
{
    ["loss"] = heldOutLoss,
    ["loss_definition"] = "mean cross-entropy (nats) of every next token of every window, teacher-forced, positions from 0",
    ["sequences"] = new JsonArray(heldOut.Select(w => (JsonNode)new JsonArray(w.Select(t => (JsonNode)t).ToArray())).ToArray()),
}.ToJsonString());
Console.WriteLine($"wrote {options.Out}");
return 0;

static Tensor Batch(IReadOnlyList<int[]> windows)
{
    int length = windows.Min(w => w.Length);
    return tensor(windows.SelectMany(w => w.Take(length)).Select(t => (long)t).ToArray(), [windows.Count, length]);
}

/// <summary>Mean cross-entropy of tokens 1..S-1 given their prefixes: logits [B, S, V], ids [B, S].</summary>
static Tensor NextTokenLoss(Tensor logits, Tensor ids)
{
    long v = logits.shape[2];
    return cross_entropy(logits.narrow(1, 0, logits.shape[1] - 1).reshape(-1, v), ids.narrow(1, 1, ids.shape[1] - 1).reshape(-1));
}

/// <summary>Mean next-token loss over all windows, nats/token (no gradients).</summary>
static double Evaluate(DeepseekV2Lm model, IReadOnlyList<int[]> windows)
{
    using var noGrad = no_grad();
    double sum = 0;
    long count = 0;
    foreach (var chunk in windows.Chunk(16))
    {
        using var scope = NewDisposeScope();
        var ids = Batch(chunk);
        long n = ids.shape[0] * (ids.shape[1] - 1);
        sum += NextTokenLoss(model.Forward(ids).Logits, ids).item<float>() * (double)n;
        count += n;
    }
    return sum / count;
}

/// <summary>Linear warm-up, then cosine decay to <paramref name="minRatio"/> of the peak.</summary>
static double Schedule(int step, int steps, int warmup, double minRatio)
{
    if (step <= warmup) return (double)step / warmup;
    double progress = (double)(step - warmup) / Math.Max(1, steps - warmup);
    return minRatio + (1 - minRatio) * 0.5 * (1 + Math.Cos(Math.PI * progress));
}
