using System.CommandLine;
using Grid.Gateway.Hosting;

namespace Grid.Gateway.Cli;

/// <summary>
/// <c>grid serve</c>: the OpenAI-compatible HTTP gateway. With no cluster configured it co-hosts the model (the
/// embedded default); with no <c>--model</c> it serves the built-in tiny checkpoint. Flags override
/// appsettings.json and <c>Grid__*</c> environment variables.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (Grid:Model:Path); default: the built-in tiny model" };
        var servedName = new Option<string?>("--served-model-name") { Description = "Model name in the API (Grid:Model:ServedName)" };
        var port = new Option<int?>("--port") { Description = "TCP port (Grid:Http:Port, default 8080; 0 = any free port)" };
        var host = new Option<string?>("--host") { Description = "Address to bind (Grid:Http:Host, default 0.0.0.0)" };
        var dtype = new Option<string?>("--dtype") { Description = "Compute dtype (Grid:Model:Dtype): float32, bfloat16, float16" };
        var maxModelLen = new Option<int?>("--max-model-len") { Description = "Cap on the context length (Grid:Model:MaxModelLen)" };
        var apiKeys = new Option<string[]>("--api-key") { Description = "Accepted API key (Grid:Http:ApiKeys); repeat for several", AllowMultipleArgumentsPerToken = false };
        var maxRunning = new Option<int?>("--max-running-sequences") { Description = "Grid:Scheduler:MaxRunningSequences" };
        var maxBatched = new Option<int?>("--max-batched-tokens") { Description = "Grid:Scheduler:MaxBatchedTokens" };
        var prefillChunk = new Option<int?>("--prefill-chunk-tokens") { Description = "Grid:Scheduler:PrefillChunkTokens" };
        var logSteps = new Option<bool>("--log-steps") { Description = "Log every scheduler step (Grid:Scheduler:LogSteps)" };
        var maxBody = new Option<long?>("--max-request-body-bytes") { Description = "Grid:Http:MaxRequestBodyBytes" };
        var engine = new Option<string?>("--engine") { Description = "grid (default: embedded silo or the Grid:Cluster cluster) or local (Grid:Model:Engine)" };
        var clustering = new Option<string?>("--clustering") { Description = "embedded (default), localhost or redis (Grid:Cluster:Clustering)" };
        var redis = new Option<string?>("--redis") { Description = "Redis connection for membership (Grid:Cluster:Redis)" };
        var expertGroups = new Option<int?>("--expert-groups") { Description = "Expert groups the routed experts are split into (Grid:Cluster:ExpertGroups)" };
        var attentionShards = new Option<int?>("--attention-shards") { Description = "Attention shards (Grid:Cluster:AttentionShards)" };
        var maxGroups = new Option<int?>("--max-groups-per-token") { Description = "Device-limited routing M: most expert groups per token, 0 = off (Grid:Cluster:MaxGroupsPerToken)" };
        var cmd = new Command("serve", "Start the OpenAI-compatible HTTP gateway")
        {
            model, servedName, port, host, dtype, maxModelLen, apiKeys, maxRunning, maxBatched, prefillChunk, logSteps, maxBody,
            engine, clustering, redis, expertGroups, attentionShards, maxGroups,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var overrides = new Dictionary<string, string?>();
            void Set<T>(string key, T? value) { if (value is not null) overrides[key] = Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture); }
            Set("Grid:Model:Path", parse.GetValue(model));
            Set("Grid:Model:ServedName", parse.GetValue(servedName));
            Set("Grid:Model:Dtype", parse.GetValue(dtype));
            Set("Grid:Model:MaxModelLen", parse.GetValue(maxModelLen));
            Set("Grid:Http:Port", parse.GetValue(port));
            Set("Grid:Http:Host", parse.GetValue(host));
            Set("Grid:Http:MaxRequestBodyBytes", parse.GetValue(maxBody));
            Set("Grid:Scheduler:MaxRunningSequences", parse.GetValue(maxRunning));
            Set("Grid:Scheduler:MaxBatchedTokens", parse.GetValue(maxBatched));
            Set("Grid:Scheduler:PrefillChunkTokens", parse.GetValue(prefillChunk));
            Set("Grid:Model:Engine", parse.GetValue(engine));
            Set("Grid:Cluster:Clustering", parse.GetValue(clustering));
            Set("Grid:Cluster:Redis", parse.GetValue(redis));
            Set("Grid:Cluster:ExpertGroups", parse.GetValue(expertGroups));
            Set("Grid:Cluster:AttentionShards", parse.GetValue(attentionShards));
            Set("Grid:Cluster:MaxGroupsPerToken", parse.GetValue(maxGroups));
            if (parse.GetValue(logSteps)) overrides["Grid:Scheduler:LogSteps"] = "true";
            var keys = parse.GetValue(apiKeys) ?? [];
            for (int i = 0; i < keys.Length; i++) overrides[$"Grid:Http:ApiKeys:{i}"] = keys[i];

            Microsoft.AspNetCore.Builder.WebApplication app;
            try { app = GridServer.Build(overrides); }
            catch (Exception e) when (e is ArgumentException or DirectoryNotFoundException or FileNotFoundException or InvalidOperationException)
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
