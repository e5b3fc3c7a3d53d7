using System.Text.Json.Nodes;
using Grid.Gateway.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Grid.Gateway.Api;

/// <summary>/v1/models, /health, /ready (<see cref="GatewayHealth"/>) and the debug endpoints.</summary>
public static class SystemEndpoints
{
    public static void Map(IEndpointRouteBuilder app, GridOptions options)
    {
        GatewayHealth.Map(app);   // /health and /ready: health checks
        app.MapGet("/v1/models", (ServingEngine engine) => Json(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(engine.ServedNames.Select(name => (JsonNode)Model(engine, name)).ToArray()),
        }));
        app.MapGet("/v1/models/{id}", (string id, ServingEngine engine) => engine.Serves(id)
            ? Json(Model(engine, id))
            : OpenAiErrors.Result(404, $"The model '{id}' does not exist", OpenAiErrors.InvalidRequest, "model", "model_not_found"));
        if (!options.Http.DebugEndpoints) return;
        app.MapGet("/debug/steps", (ServingEngine engine) => Results.Json(engine.Loop?.RecentSteps() ?? []));
        app.MapPost("/debug/pause", (ServingEngine engine) => { engine.Loop?.Pause(); return Results.Json(new { paused = engine.Loop?.Paused ?? false }); });
        app.MapPost("/debug/resume", (ServingEngine engine) => { engine.Loop?.Resume(); return Results.Json(new { paused = engine.Loop?.Paused ?? false }); });
        app.MapGet("/debug/cache", async (ServingEngine engine, CancellationToken cancellationToken) =>
        {
            if (engine.Executor is not { } executor) return OpenAiErrors.Result(503, "the model is still loading", OpenAiErrors.Unavailable, null, "model_not_ready");
            var stats = await executor.GetCacheStatsAsync(cancellationToken);
            return Results.Json(new
            {
                sequences = stats.Sequences,
                tokens = stats.Tokens,
                bytes_in_use = stats.BytesInUse,
                bytes_reserved = stats.BytesReserved,
                bytes_budget = stats.BytesBudget,
                usage_ratio = stats.UsageRatio,
                blocks_in_use = stats.BlocksInUse,
                blocks_budget = stats.BlocksBudget,
                prefix_cache = new
                {
                    cached_blocks = stats.CachedBlocks,
                    shared_blocks = stats.SharedBlocks,
                    evictions = stats.Evictions,
                    queries = stats.PrefixQueries,
                    hits = stats.PrefixHits,
                    hit_ratio = stats.PrefixQueries > 0 ? (double)stats.PrefixHits / stats.PrefixQueries : 0,
                },
                running = engine.Loop?.RunningCount ?? 0,
                waiting = engine.Loop?.WaitingCount ?? 0,
            });
        });
    }

    static JsonObject Model(ServingEngine engine, string name) => new()
    {
        ["id"] = name,
        ["object"] = "model",
        ["created"] = engine.Created.ToUnixTimeSeconds(),
        ["owned_by"] = "grid",
        ["root"] = engine.ModelName,
        ["parent"] = null,
        ["max_model_len"] = engine.Ready ? engine.ContextLength : null,
    };

    static IResult Json(JsonNode node) => Results.Text(node.ToJsonString(OpenAiJson.Options), "application/json");
}
