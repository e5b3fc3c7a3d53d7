using System.CommandLine;
using Grid.Gateway.Hosting;

namespace Grid.Gateway.Cli;

/// <summary>
/// <c>grid serve</c>: the OpenAI-compatible HTTP gateway. With no cluster configured it co-hosts the model (the
/// embedded default); with no <c>--model</c> it serves the built-in tiny checkpoint. Flags (<see cref="GridFlags"/>)
/// override <c>Grid__*</c> environment variables, which override appsettings.json (docs/configuration.md).
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var flags = new GridFlagOptions(GridExecutable.Serve);
        var cmd = new Command("serve", "Start the OpenAI-compatible HTTP gateway");
        flags.AddTo(cmd);
        cmd.SetAction(async (parse, ct) =>
        {
            var overrides = flags.Overrides(parse);
            Microsoft.AspNetCore.Builder.WebApplication app;
            try { app = GridServer.Build(overrides); }
            catch (Exception e) when (e is GridConfigurationException or ArgumentException or DirectoryNotFoundException or FileNotFoundException or InvalidOperationException)
            {
                Console.Error.WriteLine("error: " + e.Message.Split('\n')[0]);
                return 2;
            }
            await using (app)
            {
                try
                {
                    // The model (ServingEngine) is resolved here so that a bad --model fails before the port opens.
                    app.Services.GetService(typeof(ServingEngine));
                }
                catch (Exception e) when (e is DirectoryNotFoundException or FileNotFoundException or ArgumentException)
                {
                    Console.Error.WriteLine("error: " + e.Message.Split('\n')[0]);
                    return 2;
                }
                // Ctrl+C / SIGTERM: the host's console lifetime stops it (draining requests, freeing the model).
                await app.RunAsync();
            }
            return Environment.ExitCode;
        });
        return cmd;
    }
}
