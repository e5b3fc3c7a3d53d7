using System.Diagnostics;
using System.Text.Json.Nodes;
using Xunit;

namespace Grid.Tests;

/// <summary>The offline CLI, run as a real process: <c>grid generate</c>.</summary>
public class GenerateCliTests
{
    public static (int ExitCode, string Stdout, string Stderr) RunGrid(params string[] args) => RunGridWith(null, args);

    /// <summary>Runs the CLI with <paramref name="gridHome"/> as GRID_HOME (where the built-in checkpoint lives) when given.</summary>
    public static (int ExitCode, string Stdout, string Stderr) RunGridWith(string? gridHome, params string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "grid.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        if (gridHome is not null) psi.Environment["GRID_HOME"] = gridHome;
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Poll.Deadline)) { p.Kill(true); throw new TimeoutException("grid did not exit"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Theory]
    [MemberData(nameof(Golden.Cases), MemberType = typeof(Golden))]
    public void GenerateJsonMatchesGolden(string checkpoint, string prompt)
    {
        var expected = Golden.Load(checkpoint, prompt);
        var (code, stdout, stderr) = RunGrid("generate", "--model", Golden.Dir(checkpoint),
            "--prompt-ids", string.Join(",", expected.PromptIds), "--max-tokens", "16", "--ignore-eos",
            "--logprobs", "5", "--return-tokens-as-token-ids", "--json");
        Assert.True(code == 0, stderr);
        var obj = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("text_completion", obj["object"]!.GetValue<string>());
        var choice = obj["choices"]![0]!;
        Assert.Equal("length", choice["finish_reason"]!.GetValue<string>());
        expected.AssertLegacyLogprobs(choice["logprobs"]!);
        Assert.Equal(expected.PromptIds.Length, obj["usage"]!["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(16, obj["usage"]!["completion_tokens"]!.GetValue<int>());
    }

    [Fact]
    public void TextPromptUsesTheTokenizerAndRendersTokensAsText()
    {
        var expected = Golden.Load("lite_f32", "text");
        var (code, stdout, stderr) = RunGrid("generate", "--model", Golden.Dir("lite_f32"), "--prompt", "The quick brown fox",
            "--max-tokens", "4", "--ignore-eos", "--logprobs", "2", "--json");
        Assert.True(code == 0, stderr);
        var choice = JsonNode.Parse(stdout)!["choices"]![0]!;
        Assert.Equal(expected.PromptIds.Length, JsonNode.Parse(stdout)!["usage"]!["prompt_tokens"]!.GetValue<int>());
        var tokens = choice["logprobs"]!["tokens"]!.AsArray().Select(t => t!.GetValue<string>()).ToArray();
        Assert.Equal(4, tokens.Length);
        Assert.DoesNotContain(tokens, t => t.StartsWith("token_id:"));
        Assert.Equal(string.Concat(tokens), choice["text"]!.GetValue<string>());
        Assert.Contains("loading weights", stderr);
        // The timings line counts what ran (the times themselves depend on the machine and are not asserted).
        Assert.Matches($@"timings: load [0-9.]+ s; prompt {expected.PromptIds.Length} tokens, first token after [0-9.]+ s; 4 tokens in [0-9.]+ s, decode [0-9.]+ tok/s after the first", stderr);
    }

    [Fact]
    public void BuiltInModelWorksWithoutArguments()
    {
        var (code, stdout, stderr) = RunGrid("generate", "--prompt", "Hello", "--max-tokens", "5", "--temperature", "0.7", "--seed", "1", "--json");
        Assert.True(code == 0, stderr);
        var obj = JsonNode.Parse(stdout)!;
        Assert.Equal("grid-tiny", obj["model"]!.GetValue<string>());
        Assert.True(obj["usage"]!["completion_tokens"]!.GetValue<int>() is >= 1 and <= 5);
        // Same seed, same output.
        Assert.Equal(obj["choices"]![0]!["text"]!.GetValue<string>(),
            JsonNode.Parse(RunGrid("generate", "--prompt", "Hello", "--max-tokens", "5", "--temperature", "0.7", "--seed", "1", "--json").Stdout)!["choices"]![0]!["text"]!.GetValue<string>());
    }

    [Theory]
    [InlineData(new[] { "generate", "--prompt", "x", "--prompt-ids", "1" }, "exactly one of --prompt or --prompt-ids")]
    [InlineData(new[] { "generate", "--prompt-ids", "1,a" }, "is not a comma-separated list of integers")]
    [InlineData(new[] { "generate", "--prompt", "x", "--temperature", "-1" }, "temperature must be between 0 and 2")]
    [InlineData(new[] { "generate", "--prompt", "x", "--top-p", "0" }, "top_p must be in (0, 1]")]
    [InlineData(new[] { "generate", "--prompt", "x", "--model", "/nonexistent" }, "model folder not found")]
    [InlineData(new[] { "generate", "--prompt", "x", "--max-tokens", "zero" }, "zero")]
    [InlineData(new[] { "generate", "--bogus" }, "--bogus")]
    public void BadArgumentsGiveAOneLineErrorAndNonZeroExit(string[] args, string message)
    {
        // As on a fresh machine (no built-in checkpoint written yet): arguments are checked before any work, so the
        // error is the only line and nothing is written.
        var home = Path.Combine(Path.GetTempPath(), $"grid-home-{Guid.NewGuid():N}");
        try
        {
            var (code, _, stderr) = RunGridWith(home, args);
            Assert.NotEqual(0, code);
            var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.StartsWith("error: ", lines[0]);
            Assert.Contains(message, lines[0]);
            Assert.False(Directory.Exists(Path.Combine(home, "builtin-tiny-v1")), "a bad argument wrote the built-in checkpoint");
        }
        finally
        {
            if (Directory.Exists(home)) Directory.Delete(home, true);
        }
    }

    /// <summary>
    /// SIGTERM stops `grid generate` at once wherever it is (loading weights or generating): the last stderr line says so
    /// and the exit code is 143. The signal goes once the process has started loading (a state, read from stderr); the
    /// request asks for 100,000 tokens, so the process cannot have finished on its own when the signal arrives.
    /// </summary>
    [Fact]
    public async Task SigtermStopsGenerateWithExitCode143()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "grid.dll"));
        foreach (var a in new[] { "generate", "--model", Golden.Dir("lite_f32"), "--prompt-ids", "1,2,3", "--max-tokens", "100000", "--ignore-eos" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var lines = new List<string>();
        string? line;
        while ((line = await p.StandardError.ReadLineAsync()) is not null)
        {
            lines.Add(line);
            if (line.Contains("loading weights")) break;
        }
        Assert.True(line is not null, "grid exited before loading: " + string.Join("\n", lines));
        using (var kill = Process.Start("kill", ["-TERM", p.Id.ToString()])!) await kill.WaitForExitAsync();
        var rest = p.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(Poll.Deadline);
        try { await p.WaitForExitAsync(deadline.Token); }
        catch (OperationCanceledException) { p.Kill(true); throw new TimeoutException("grid did not exit after SIGTERM"); }
        var all = lines.Concat((await rest).Split('\n', StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.Equal(143, p.ExitCode);
        Assert.Equal("error: interrupted by SIGTERM", all[^1]);
        await stdout;
    }

    /// <summary>A folder with a config and weights but no tokenizer (the benchmark model's folder is one): one line, no stack trace.</summary>
    [Fact]
    public void ModelFolderWithoutATokenizerGivesAOneLineError()
    {
        var dir = ModelTestKit.TempDir("no-tokenizer");
        foreach (var f in Directory.GetFiles(Golden.Dir("lite_f32")))
            if (!Path.GetFileName(f).StartsWith("tokenizer")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var (code, _, stderr) = RunGrid("generate", "--model", dir, "--prompt", "x");
        Assert.NotEqual(0, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, stderr);
        Assert.Equal($"error: tokenizer.json not found in {dir}", lines[0].TrimEnd('.'));
    }

    [Theory]
    [InlineData("1,99999", 99999)]
    [InlineData("1,-1", -1)]
    public void OutOfVocabularyPromptIdIsRejected(string ids, int bad)
    {
        var (code, _, stderr) = RunGrid("generate", "--model", Golden.Dir("lite_f32"), "--engine", "local", "--prompt-ids", ids);
        Assert.Equal(2, code);
        Assert.Contains($"token id {bad} is outside the vocabulary (0..511)", stderr);
    }
}
