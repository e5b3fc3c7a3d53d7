using System.Diagnostics;
using Grid.Benchmarks;
using Grid.ModelCore.Model;

bool quick = args.Contains("--quick");
void Log(string m) => Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss}] {m}");
var dir = BenchModel.Ensure(Log);
Log("matmul ceiling");
var gflops = ModelCoreBench.MatmulGflops();
Log($"matmul 1024^3 f32: {gflops:F1} GFLOP/s");
var sw = Stopwatch.StartNew();
using var model = DeepseekV2Model.Load(dir);
Log($"loaded mid model in {sw.Elapsed.TotalSeconds:F1} s");
using var noGrad = TorchSharp.torch.no_grad();
var prefill = ModelCoreBench.Prefill(model, quick ? 256 : 512, quick ? 1 : 3);
Log($"prefill {prefill.Tokens}: {prefill.TokensPerSecond:F1} tok/s, {prefill.Gflops:F1} GFLOP/s = {prefill.Gflops / gflops:P0} of matmul");
foreach (var b in new[] { 1, 8, 32 })
{
    var d = ModelCoreBench.Decode(model, b, quick ? 64 : 512, quick ? 8 : 64);
    Log($"decode batch {b}: {d.TokensPerSecond:F1} tok/s; split ms/step: {string.Join(", ", d.SplitMs.Select(kv => $"{kv.Key} {kv.Value:F1}"))}");
}
