using System.CommandLine;
using Grid.Gateway.Cli;

var root = new RootCommand("Grid: DeepSeek-V2 Mixture-of-Experts serving on Orleans")
{
    GenerateCommand.Create(),
    ModelPathCommand(),
    ServeCommand.Create(),
    WriteCheckpointCommand.Create(),
};

static Command ModelPathCommand()
{
    var cmd = new Command("model-path", "Print the folder of the built-in tiny checkpoint (writing it on first use)");
    cmd.SetAction(_ => { Console.WriteLine(Grid.ModelCore.Weights.RandomCheckpoint.EnsureBuiltIn()); return 0; });
    return cmd;
}
var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    Console.Error.WriteLine("error: " + parse.Errors[0].Message);
    return 2;
}
try
{
    // No System.CommandLine Ctrl+C handling: `serve` leaves it to the web host, which shuts down cleanly.
    return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    Console.Error.WriteLine("error: " + e.Message.Split('\n')[0]);
    return 1;
}
