using System.Reflection;
using System.Reflection.Emit;
using Grid.ModelCore.Model;
using Grid.ModelCore.Runtime;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Serving;
using TorchSharp;
using Xunit;

namespace Grid.Tests.Load;

/// <summary>
/// The "Scalar::toFloat: Expected false to be true" crash under load (issue 10): TorchSharp turns a number passed
/// where a <see cref="Scalar"/> is expected into a native scalar that only a finalizer frees, and a garbage collection
/// started by another thread while libtorch runs the op frees it mid-call (see <see cref="Scalars"/>). These tests keep
/// model-core from creating such scalars and run real steps of many sequences while other threads force collections
/// and run finalizers.
/// </summary>
public sealed class ScalarLifetimeTests
{
    /// <summary>
    /// Every call in model-core's IL that creates a <see cref="Scalar"/> nothing owns: an implicit conversion in
    /// model-core itself, or a TorchSharp method that makes one inside (<c>a + b</c> makes <c>alpha = 1</c>,
    /// <c>t * 0.5</c> converts 0.5, <c>arange(0, n)</c> converts both bounds).
    /// </summary>
    public static List<string> UnownedScalarCalls(Assembly assembly)
    {
        var found = new List<string>();
        var memo = new Dictionary<MethodBase, bool>();
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var type in assembly.GetTypes())
            foreach (var method in type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all)))
                foreach (var callee in Calls(method))
                {
                    if (IsImplicitScalar(callee))
                        found.Add($"{type.FullName}.{method.Name}: implicit {callee.GetParameters()[0].ParameterType.Name} -> Scalar");
                    else if (IsTorchSharp(callee) && CreatesScalar(callee, 3, memo))
                        found.Add($"{type.FullName}.{method.Name}: {callee.DeclaringType!.Name}.{callee.Name}({string.Join(", ", callee.GetParameters().Select(p => p.ParameterType.Name))}) creates a Scalar inside");
                }
        return found;
    }

    static bool IsTorchSharp(MethodBase m) => m.DeclaringType?.Assembly == typeof(Scalar).Assembly;

    static bool IsImplicitScalar(MethodBase m) =>
        m.DeclaringType == typeof(Scalar) && m.Name == "op_Implicit";

    static bool CreatesScalar(MethodBase m, int depth, Dictionary<MethodBase, bool> memo)
    {
        if (memo.TryGetValue(m, out var known)) return known;
        memo[m] = false;
        bool creates = false;
        foreach (var callee in Calls(m))
        {
            if (IsImplicitScalar(callee) || callee.Name.StartsWith("To", StringComparison.Ordinal) && callee.Name.EndsWith("Scalar", StringComparison.Ordinal)
                && callee.DeclaringType?.Name == "ScalarExtensionMethods")
            { creates = true; break; }
            if (depth > 1 && IsTorchSharp(callee) && CreatesScalar(callee, depth - 1, memo)) { creates = true; break; }
        }
        return memo[m] = creates;
    }

    static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value);

    /// <summary>The methods <paramref name="method"/>'s IL calls (call, callvirt, newobj, ldftn).</summary>
    static IEnumerable<MethodBase> Calls(MethodBase method)
    {
        byte[]? il;
        try { il = method.GetMethodBody()?.GetILAsByteArray(); }
        catch (Exception) { yield break; }
        if (il is null) yield break;
        var typeArgs = method.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
        var methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        for (int i = 0; i < il.Length;)
        {
            short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            if (!OpCodesByValue.TryGetValue(value, out var op)) yield break;
            i += op.Size;
            int operand = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
            if (op.OperandType == OperandType.InlineMethod)
            {
                MethodBase? callee = null;
                try { callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArgs, methodArgs); }
                catch (Exception) { }
                if (callee is not null) yield return callee;
            }
            i += operand;
        }
    }

    [Fact]
    public void ModelCoreHandsLibtorchOnlyScalarsItOwns()
    {
        var found = UnownedScalarCalls(typeof(Scalars).Assembly);
        Assert.True(found.Count == 0, "model-core creates Scalars nothing owns (use Scalars, a field, or a using):\n" + string.Join("\n", found));
    }

    [Fact]
    public void TheScanFindsTheUnownedScalarsOfTorchSharpOperators()
    {
        // The scan must see what caused the crash, or the test above proves nothing.
        var found = UnownedScalarCalls(typeof(ScalarLifetimeTests).Assembly);
        Assert.Contains(found, f => f.Contains(nameof(UnownedPatterns)) && f.Contains("implicit Single -> Scalar"));
        Assert.Contains(found, f => f.Contains(nameof(UnownedPatterns)) && f.Contains("op_Addition(Tensor, Tensor) creates a Scalar inside"));
        Assert.Contains(found, f => f.Contains(nameof(UnownedPatterns)) && f.Contains("op_Multiply(Tensor, Double) creates a Scalar inside"));
        Assert.DoesNotContain(found, f => f.Contains(nameof(OwnedPatterns)));
    }

    // Scanned, never run: the patterns the model used before the fix, and their owned replacements.
    static torch.Tensor UnownedPatterns(torch.Tensor scores, torch.Tensor mask, torch.Tensor other) =>
        (scores.masked_fill(mask, float.NegativeInfinity) + other) * 0.125;

    static torch.Tensor OwnedPatterns(torch.Tensor scores, torch.Tensor mask, torch.Tensor other, Scalar scale) =>
        scores.masked_fill(mask, Scalars.NegativeInfinity).Add(other).mul(scale);

    /// <summary>
    /// 64 sequences decode together through model-core's <see cref="LocalStepExecutor"/> (its own inference thread, as
    /// <c>grid serve --engine local</c>) while two other threads allocate and force full collections with finalizers,
    /// the situation in which freed scalars failed whole steps. Every step must succeed and every sequence must produce
    /// exactly the tokens it produces with no collector pressure.
    /// </summary>
    [Fact]
    public async Task SixtyFourSequencesDecodeUnderForcedCollectionsExactlyAsInQuiet()
    {
        const int sequences = 64, promptLength = 24, steps = 24;
        var prompts = Enumerable.Range(0, sequences)
            .Select(s => Enumerable.Range(0, promptLength).Select(i => (s * 31 + i * 7) % 400 + 1).ToArray()).ToArray();
        var quiet = await DecodeAll(prompts, steps, pressure: false);
        var loaded = await DecodeAll(prompts, steps, pressure: true);
        for (int s = 0; s < sequences; s++) Assert.Equal(quiet[s], loaded[s]);
    }

    static async Task<List<int>[]> DecodeAll(int[][] prompts, int steps, bool pressure)
    {
        using var thread = new InferenceThread("grid-load-test");
        var model = await thread.RunAsync(() => DeepseekV2Model.Load(Golden.Dir("lite_f32")));
        await using var executor = new LocalStepExecutor(model, thread);
        var greedy = new SamplingParams { Temperature = 0 };
        var tokens = prompts.Select(_ => new List<int>()).ToArray();
        using var stop = new CancellationTokenSource();
        var pressureThreads = pressure ? StartPressure(stop.Token) : [];
        try
        {
            var first = await executor.StepAsync(prompts.Select((p, s) => new StepChunk(s, 0, p)
                { Sample = new TokenSampling(greedy, new DrawKey(0, 0, 0)) }).ToList(), CancellationToken.None);
            for (int s = 0; s < prompts.Length; s++) tokens[s].Add(first[s].Next!.Token);
            for (int i = 1; i < steps; i++)
            {
                var chunks = prompts.Select((p, s) => new StepChunk(s, p.Length + i - 1, [tokens[s][^1]])
                    { Sample = new TokenSampling(greedy, new DrawKey(0, 0, i)) }).ToList();
                var results = await executor.StepAsync(chunks, CancellationToken.None);
                for (int s = 0; s < prompts.Length; s++) tokens[s].Add(results[s].Next!.Token);
            }
        }
        finally
        {
            stop.Cancel();
            foreach (var t in pressureThreads) t.Join();
        }
        return tokens;
    }

    /// <summary>One thread forces full blocking collections and runs finalizers; one allocates short-lived garbage.</summary>
    static Thread[] StartPressure(CancellationToken stop)
    {
        var collector = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect(2, GCCollectionMode.Forced, blocking: true);
                GC.WaitForPendingFinalizers();
            }
        }) { IsBackground = true, Name = "gc-pressure" };
        var allocator = new Thread(() =>
        {
            var keep = new object[1024];
            for (long i = 0; !stop.IsCancellationRequested; i++) keep[i % keep.Length] = new byte[(int)(i % 4096) + 64];
        }) { IsBackground = true, Name = "alloc-pressure" };
        collector.Start();
        allocator.Start();
        return [collector, allocator];
    }
}
