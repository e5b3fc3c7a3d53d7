using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grid.Gateway.Api;
using Grid.Gateway.Hosting;
using Grid.Gateway.Scheduling;
using Grid.ModelCore.Sampling;
using Grid.ModelCore.Tokenization;
using Microsoft.Extensions.Logging.Abstractions;

namespace Grid.Gateway.Cli;

/// <summary><c>grid generate</c>: one offline completion, printed as text or as an OpenAI text_completion object.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text (BOS is added)" };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids, used as given" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 16 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0.0 };
        var topP = new Option<double>("--top-p") { DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "0 = off", DefaultValueFactory = _ => 0 };
        var seed = new Option<long?>("--seed");
        var logprobs = new Option<int?>("--logprobs") { Description = "Top-N logprobs per generated token" };
        var tokensAsIds = new Option<bool>("--return-tokens-as-token-ids") { Description = "Render logprob tokens as token_id:N" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Do not stop at the EOS token" };
        var json = new Option<bool>("--json") { Description = "Print an OpenAI text_completion JSON object" };
        var cmd = new Command("generate", "Generate one completion offline")
        {
            prompt, promptIds, maxTokens, temperature, topP, topK, seed, logprobs, tokensAsIds, ignoreEos, json,
        };
        // --model, --dtype, --engine, scheduler and cluster flags: the Grid:* keys, read like `grid serve` reads them.
        var flags = new GridFlagOptions(GridExecutable.Generate);
        flags.AddTo(cmd);
        // SIGTERM / SIGINT stop the command at any point, weight loading included (System.CommandLine's own handling is
        // off: `grid serve` drains through the host's lifetime instead): one line and 143 / 130, as a shell expects.
        cmd.SetAction(async (parse, ct) =>
        {
            using var interrupt = CancellationTokenSource.CreateLinkedTokenSource(ct);
            PosixSignal? received = null;
            void OnSignal(PosixSignalContext context)
            {
                context.Cancel = true;
                received ??= context.Signal;
                interrupt.Cancel();
            }
            using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            try { return await GenerateAsync(parse, interrupt.Token); }
            catch (Exception e) when (received is PosixSignal signal && e is OperationCanceledException or TaskCanceledException)
            {
                Console.Error.WriteLine($"error: interrupted by {signal}");
                return signal == PosixSignal.SIGINT ? 130 : 143;
            }
        });
        return cmd;

        async Task<int> GenerateAsync(ParseResult parse, CancellationToken ct)
        {
            var p = parse.GetValue(prompt);
            var ids = parse.GetValue(promptIds);
            if ((p is null) == (ids is null)) return Fail("give exactly one of --prompt or --prompt-ids");
            var sampling = new SamplingParams
            {
                Temperature = parse.GetValue(temperature),
                TopP = parse.GetValue(topP),
                TopK = parse.GetValue(topK),
                Seed = parse.GetValue(seed),
                Logprobs = parse.GetValue(logprobs) ?? 0,
            };
            var error = Validation.Sampling(sampling.Temperature, sampling.TopP, sampling.TopK, parse.GetValue(logprobs), parse.GetValue(maxTokens));
            if (error is not null) return Fail(error.Value.Message);
            // Every argument is checked before any work (resolving the model may write the built-in checkpoint first).
            int[]? givenIds = null;
            try { givenIds = ids?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray(); }
            catch (Exception e) when (e is FormatException or OverflowException) { return Fail($"--prompt-ids: '{ids}' is not a comma-separated list of integers"); }
            // appsettings.json < Grid__* environment variables < flags, bound and validated as `grid serve` does.
            GridOptions options;
            try { options = GridOptionsSetup.Load(GridServer.CreateBuilder(flags.Overrides(parse)).Configuration, GridExecutable.Generate); }
            catch (GridConfigurationException e) { return Fail(e.Message); }
            var modelArg = options.Model.Path;
            string dir;
            try { dir = EngineFactory.ResolveModel(modelArg, m => Console.Error.WriteLine(m)); }
            catch (Exception e) { return Fail(e.Message); }
            GridTokenizer tokenizer;
            try { tokenizer = EngineFactory.LoadTokenizer(dir); }
            catch (Exception e) when (e is TokenizerLoadException or IOException or ArgumentException) { return Fail(e.Message); }
            using var ownedTokenizer = tokenizer;
            var promptTokens = givenIds ?? tokenizer.Encode(p!);
            if (promptTokens.Length == 0) return Fail("the prompt is empty");
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await using var executor = await EngineFactory.CreateExecutorAsync(options.Model.Engine, dir, options.Model.Dtype,
                options.Cluster, CliLogging.FromEnvironment(), Progress.Loading, m => Console.Error.WriteLine(m), ct, options.Silo, options.Model.Quantization);
            var loadSeconds = clock.Elapsed.TotalSeconds;
            var vocab = executor.Config.VocabSize;
            int badAt = Array.FindIndex(promptTokens, t => t < 0 || t >= vocab);
            if (badAt >= 0)
                return Fail($"--prompt-ids: token id {promptTokens[badAt]} is outside the vocabulary (0..{vocab - 1})");
            var maxPositions = executor.Config.MaxPositionEmbeddings;
            var contextLength = options.Model.MaxModelLen > 0 ? Math.Min(options.Model.MaxModelLen, maxPositions) : maxPositions;
            await using var scheduler = new EngineLoop(executor, options.Scheduler, NullLogger<EngineLoop>.Instance, contextLength);
            var request = new GenerationRequest
            {
                PromptIds = promptTokens,
                Sampling = sampling,
                MaxTokens = parse.GetValue(maxTokens),
                StopTokenIds = !parse.GetValue(ignoreEos) && tokenizer.EosId is int eos ? [eos] : [],
            };
            var completion = new CompletionBuilder(tokenizer, parse.GetValue(logprobs) is not null, parse.GetValue(tokensAsIds), []);
            clock.Restart();
            double? firstToken = null;
            int generated = 0;
            await foreach (var ev in scheduler.Submit(request, ct).ReadAllAsync(ct))
            {
                if (ev is TokenEvent)
                {
                    firstToken ??= clock.Elapsed.TotalSeconds;
                    generated++;
                }
                completion.Add(ev);
            }
            // llama.cpp-style timings on stderr: what a user compares engines by (the decode rate excludes the first token).
            var total = clock.Elapsed.TotalSeconds;
            var decodeRate = generated > 1 && firstToken is double f && total > f
                ? FormattableString.Invariant($", decode {(generated - 1) / (total - f):F2} tok/s after the first") : "";
            Console.Error.WriteLine(FormattableString.Invariant(
                $"timings: load {loadSeconds:F1} s; prompt {promptTokens.Length} tokens, first token after {firstToken ?? total:F2} s; {generated} tokens in {total:F2} s{decodeRate}"));
            if (parse.GetValue(json))
            {
                var obj = OpenAiJson.TextCompletion("cmpl-" + Guid.NewGuid().ToString("N")[..24], options.Model.ServedNames() is { Count: > 0 } names ? names[0] : EngineFactory.ModelName(modelArg, dir),
                    [completion.ChoiceJson(0)], completion.Usage());
                Console.WriteLine(obj.ToJsonString(OpenAiJson.Options));
            }
            else
            {
                Console.WriteLine(completion.Text);
            }
            return 0;
        }
    }

    static int Fail(string message)
    {
        Console.Error.WriteLine("error: " + message);
        return 2;
    }
}

/// <summary>
/// Console logs on stderr for CLI commands: weight-loading progress and warnings by default, everything at
/// GRID_LOG_LEVEL (e.g. Information, Debug) when set.
/// </summary>
public static class CliLogging
{
    public static Microsoft.Extensions.Logging.ILoggerFactory FromEnvironment()
    {
        var level = Environment.GetEnvironmentVariable("GRID_LOG_LEVEL");
        if (string.IsNullOrEmpty(level) || !Enum.TryParse<Microsoft.Extensions.Logging.LogLevel>(level, true, out var parsed))
            parsed = Microsoft.Extensions.Logging.LogLevel.Warning;
        return Microsoft.Extensions.Logging.LoggerFactory.Create(b => b.SetMinimumLevel(parsed)
            .AddFilter("Grid.Grains.Hosting.ModelHost", Microsoft.Extensions.Logging.LogLevel.Information)
            .AddFilter("Orleans", string.IsNullOrEmpty(level) ? Microsoft.Extensions.Logging.LogLevel.Error : parsed)
            .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; })
            .AddFilter("Polly", Microsoft.Extensions.Logging.LogLevel.Warning)
            .Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = Microsoft.Extensions.Logging.LogLevel.Trace));
    }
}

/// <summary>Progress lines on stderr.</summary>
public static class Progress
{
    /// <summary>One line per reported step (the loader reports tenths: <see cref="Grid.ModelCore.Weights.DecileProgress"/>).</summary>
    public static void Loading(Grid.ModelCore.Weights.LoadProgress p) =>
        Console.Error.WriteLine($"loading weights: {p.TensorsDone}/{p.TensorsTotal} tensors, {p.BytesDone / (1 << 20)}/{p.BytesTotal / (1 << 20)} MiB (f32)");
}
