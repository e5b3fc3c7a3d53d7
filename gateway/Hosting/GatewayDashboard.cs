using Grid.Gateway.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Orleans.Dashboard;

namespace Grid.Gateway.Hosting;

/// <summary>
/// The Orleans Dashboard (<c>Microsoft.Orleans.Dashboard</c>) on the gateway at <c>/dashboard</c>, when
/// <c>Grid:Cluster:Dashboard</c> is on (silos must run with it too: they host the dashboard's grains). The 10.x
/// dashboard is minimal-API endpoints (<c>MapOrleansDashboard</c>) that resolve their services (the dashboard client,
/// which calls the dashboard grains) from the host that runs Orleans. The gateway's Orleans client or embedded silo
/// runs in a host of its own, started once the model is found, so the dashboard's endpoints live in a small pipeline
/// of their own whose grain factory is the gateway's, mounted at <c>/dashboard</c> in the gateway's pipeline: after the
/// API-key check like every other route. 503 until the gateway has joined the cluster.
/// </summary>
public static class GatewayDashboard
{
    public const string Path = "/dashboard";

    public static void Map(WebApplication app)
    {
        var engine = app.Services.GetRequiredService<ServingEngine>();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_ => Grains(engine) ?? throw new InvalidOperationException("the gateway has not joined the cluster yet"));
        new DashboardClientBuilder(builder.Services, builder.Configuration).AddDashboard();
        var dashboard = builder.Build();
        dashboard.UseRouting();
        dashboard.MapOrleansDashboard();
        dashboard.UseEndpoints(_ => { });
        var pipeline = ((IApplicationBuilder)dashboard).Build();
        app.Lifetime.ApplicationStopped.Register(() => dashboard.DisposeAsync().AsTask().GetAwaiter().GetResult());
        app.Map(Path, branch => branch.Run(async context =>
        {
            if (Grains(engine) is null)
            {
                await OpenAiErrors.WriteAsync(context, new ApiException(503, "the dashboard is available once the gateway has joined the cluster", null,
                    "model_not_ready", OpenAiErrors.Unavailable), context.RequestAborted);
                return;
            }
            // The page loads its scripts relative to itself: /dashboard must end with a slash.
            if (!context.Request.Path.HasValue)
            {
                context.Response.Redirect(context.Request.PathBase + "/" + context.Request.QueryString);
                return;
            }
            await using var scope = dashboard.Services.CreateAsyncScope();
            var outer = context.RequestServices;
            context.RequestServices = scope.ServiceProvider;
            try { await pipeline(context); }
            finally { context.RequestServices = outer; }
        }));
    }

    static IGrainFactory? Grains(ServingEngine engine) =>
        engine.Executor is OwnedGridExecutor grid ? grid.Connection.Services.GetService<IGrainFactory>() : null;

    /// <summary>Lets <c>AddDashboard(IClientBuilder)</c> register the dashboard's client-side services in a plain service collection.</summary>
    sealed class DashboardClientBuilder(IServiceCollection services, Microsoft.Extensions.Configuration.IConfiguration configuration) : Orleans.Hosting.IClientBuilder
    {
        public IServiceCollection Services => services;
        public Microsoft.Extensions.Configuration.IConfiguration Configuration => configuration;
    }
}
