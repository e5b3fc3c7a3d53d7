using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Grid.Benchmarks;

/// <summary>One section of the report: its figures as JSON, its Markdown tables, summary rows and what limits its figures.</summary>
public sealed class Section(string name, string title)
{
    public string Name { get; } = name;
    public string Title { get; } = title;
    public JsonObject Data { get; } = new();
    public List<string> Markdown { get; } = new();
    /// <summary>Rows of the report's summary table: figure, value, what limits it.</summary>
    public List<(string Figure, string Value, string LimitedBy)> Summary { get; } = new();
    public List<string> Notes { get; } = new();
    public double Seconds { get; set; }
    public string? Error { get; set; }

    public void Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        Markdown.Add("| " + string.Join(" | ", header) + " |");
        Markdown.Add("|" + string.Concat(header.Select(_ => " --- |")));
        foreach (var r in rows) Markdown.Add("| " + string.Join(" | ", r) + " |");
        Markdown.Add("");
    }
}

/// <summary>Collects the sections of one run and writes them as JSON (System.Text.Json) and Markdown.</summary>
public sealed class Report
{
    readonly List<Section> _sections = new();
    readonly DateTimeOffset _started = DateTimeOffset.Now;

    public JsonObject Machine { get; } = new();
    public JsonObject Options { get; } = new();

    public void Add(Section s) => _sections.Add(s);

    public static string F(double v, int digits = 1) =>
        double.IsNaN(v) || double.IsInfinity(v) ? "n/a" : v.ToString("F" + digits, CultureInfo.InvariantCulture);

    public static string Pct(double v) => double.IsNaN(v) ? "n/a" : (v * 100).ToString("F0", CultureInfo.InvariantCulture) + "%";

    public static JsonNode? Num(double v, int digits = 4) => double.IsNaN(v) || double.IsInfinity(v) ? null : JsonValue.Create(Math.Round(v, digits));

    /// <summary>Cores, torch threads, CPU, OS, runtime and the git commit of the working tree.</summary>
    public void DescribeMachine(string repoRoot)
    {
        Machine["cores"] = Environment.ProcessorCount;
        Machine["torch_threads"] = TorchSharp.torch.get_num_threads();
        Machine["cpu"] = CpuModel();
        Machine["memory_gib"] = Math.Round(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024.0 * 1024 * 1024), 1);
        Machine["os"] = RuntimeInformation.OSDescription;
        Machine["dotnet"] = RuntimeInformation.FrameworkDescription;
        Machine["torchsharp"] = typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString();
        Machine["git_commit"] = Git(repoRoot, "rev-parse HEAD");
        Machine["loadavg_at_start"] = LoadAverage();
        Machine["git_dirty"] = Git(repoRoot, "status --porcelain") is { Length: > 0 };
    }

    /// <summary>1/5/15-minute load averages: other work on the machine distorts every figure.</summary>
    public static string? LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return null; }
    }

    static string? CpuModel()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"))?.Split(':', 2)[1].Trim();
        }
        catch (IOException) { return null; }
    }

    static string? Git(string root, string args)
    {
        try
        {
            var psi = new ProcessStartInfo("git", args) { WorkingDirectory = root, RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            var output = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception) { return null; }
    }

    public JsonObject ToJson()
    {
        var sections = new JsonObject();
        foreach (var s in _sections)
        {
            var o = (JsonObject)s.Data.DeepClone();
            o["title"] = s.Title;
            o["seconds"] = Math.Round(s.Seconds, 1);
            if (s.Error is not null) o["error"] = s.Error;
            o["limited_by"] = new JsonArray(s.Summary.Select(r => (JsonNode)new JsonObject { ["figure"] = r.Figure, ["value"] = r.Value, ["limited_by"] = r.LimitedBy }).ToArray());
            sections[s.Name] = o;
        }
        return new JsonObject
        {
            ["started"] = _started.ToString("o"),
            ["seconds"] = Math.Round((DateTimeOffset.Now - _started).TotalSeconds, 1),
            ["machine"] = Machine.DeepClone(),
            ["loadavg_at_end"] = LoadAverage(),
            ["options"] = Options.DeepClone(),
            ["sections"] = sections,
            ["goals"] = new JsonArray(GoalRows().Select(g => (JsonNode)new JsonObject { ["goal"] = g.Goal, ["measured"] = g.Measured, ["target"] = g.Target, ["met"] = g.Met }).ToArray()),
        };
    }

    public string ToMarkdown()
    {
        var md = new StringBuilder();
        md.AppendLine($"# Grid benchmark ({(Options["quick"]?.GetValue<bool>() == true ? "quick" : "full")} run, {_started:yyyy-MM-dd HH:mm})");
        md.AppendLine();
        md.AppendLine($"Machine: {Machine["cores"]} cores ({Machine["cpu"]}), torch threads {Machine["torch_threads"]}, {Machine["os"]}, {Machine["dotnet"]}, " +
                      $"commit {Machine["git_commit"]?.ToString()[..Math.Min(10, Machine["git_commit"]?.ToString().Length ?? 0)]}{(Machine["git_dirty"]?.GetValue<bool>() == true ? " (dirty)" : "")}. " +
                      $"Total {F((DateTimeOffset.Now - _started).TotalSeconds, 0)} s; load average at start {Machine["loadavg_at_start"]}, at end {LoadAverage()}.");
        md.AppendLine("Ratios compare figures measured in this run; absolute numbers describe this machine only.");
        md.AppendLine();
        md.AppendLine("| figure | value | limited by |");
        md.AppendLine("| --- | --- | --- |");
        foreach (var s in _sections)
        {
            if (s.Error is not null) md.AppendLine($"| {s.Title} | failed: {s.Error.Replace('|', '/')} | |");
            foreach (var r in s.Summary) md.AppendLine($"| {r.Figure} | {r.Value} | {r.LimitedBy} |");
        }
        md.AppendLine();
        if (GoalRows() is { Count: > 0 } goals)
        {
            md.AppendLine("Goals (issues 12 and 13), each a ratio measured in this run:");
            md.AppendLine();
            md.AppendLine("| goal | measured | target | met |");
            md.AppendLine("| --- | --- | --- | --- |");
            foreach (var g in goals) md.AppendLine($"| {g.Goal} | {g.Measured} | {g.Target} | {(g.Met is bool m ? (m ? "yes" : "**no**") : "-")} |");
            md.AppendLine();
        }
        foreach (var s in _sections)
        {
            md.AppendLine($"## {s.Title} ({F(s.Seconds, 0)} s)");
            md.AppendLine();
            if (s.Error is not null) { md.AppendLine($"Failed: {s.Error}"); md.AppendLine(); }
            foreach (var line in s.Markdown) md.AppendLine(line);
            foreach (var n in s.Notes) md.AppendLine("- " + n);
            if (s.Notes.Count > 0) md.AppendLine();
        }
        return md.ToString();
    }

    List<Goals.Row> GoalRows() => Goals.Evaluate(_sections.Where(s => s.Error is null).ToDictionary(s => s.Name, s => s.Data));

    public (string Json, string Markdown) Write(string directory)
    {
        Directory.CreateDirectory(directory);
        var json = Path.Combine(directory, "latest.json");
        var md = Path.Combine(directory, "latest.md");
        File.WriteAllText(json, ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(md, ToMarkdown());
        return (json, md);
    }
}
