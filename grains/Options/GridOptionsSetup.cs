using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Grid.Configuration;

/// <summary>Bad <c>Grid:*</c> configuration, in one line that names the key (CLIs print it as <c>error: ...</c>).</summary>
public sealed class GridConfigurationException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Binds the <c>Grid:*</c> tree with the options pattern and registers the validators an executable needs.</summary>
public static class GridOptionsSetup
{
    /// <summary>
    /// <c>AddOptions&lt;GridOptions&gt;().Bind(Grid).ValidateOnStart()</c> plus the <see cref="IValidateOptions{GridOptions}"/>
    /// of the sections <paramref name="executable"/> reads.
    /// </summary>
    public static IServiceCollection AddGridOptions(this IServiceCollection services, IConfiguration configuration, GridExecutable executable)
    {
        services.AddOptions<GridOptions>().Bind(configuration.GetSection(GridOptions.Section)).ValidateOnStart();
        foreach (var validator in Validators(executable))
            services.TryAddEnumerable(ServiceDescriptor.Singleton(typeof(IValidateOptions<GridOptions>), validator));
        // A silo joins a cluster: the "embedded" default (the gateway co-hosting its own silo) means localhost membership.
        if (executable == GridExecutable.Silo)
            services.PostConfigure<GridOptions>(o =>
            {
                if (o.Cluster.IsEmbedded) o.Cluster.Clustering = "localhost";
                // A StatefulSet pod: its expert groups follow from its ordinal (ExpertLayout), whatever the file says.
                if (o.Silo.Ordinal >= 0 && o.Silo.ExpertSilos >= 1 && o.Cluster.ExpertGroups >= 1)
                    o.Silo.ExpertGroups = ExpertLayout.GroupsFor(o.Silo.Ordinal, o.Silo.ExpertSilos, o.Cluster.ExpertGroups);
            });
        return services;
    }

    static IEnumerable<Type> Validators(GridExecutable executable) => executable switch
    {
        GridExecutable.Serve => [typeof(ModelOptionsValidator), typeof(HttpOptionsValidator), typeof(SchedulerOptionsValidator), typeof(ClusterOptionsValidator), typeof(CacheOptionsValidator)],
        GridExecutable.Generate => [typeof(ModelOptionsValidator), typeof(SchedulerOptionsValidator), typeof(ClusterOptionsValidator), typeof(CacheOptionsValidator)],
        GridExecutable.Silo => [typeof(ModelOptionsValidator), typeof(ClusterOptionsValidator), typeof(SiloOptionsValidator), typeof(CacheOptionsValidator)],
        GridExecutable.Benchmark => [typeof(ClusterOptionsValidator)],
        _ => throw new ArgumentOutOfRangeException(nameof(executable), executable, "one executable"),
    };

    /// <summary>
    /// Binds and validates now, through the same registration as <see cref="AddGridOptions"/>, for what a host needs
    /// before it is built (listen ports, membership, silo metadata) and so that bad configuration fails before anything
    /// starts.
    /// </summary>
    /// <exception cref="GridConfigurationException">A value does not convert, or a validator fails.</exception>
    public static GridOptions Load(IConfiguration configuration, GridExecutable executable)
    {
        using var services = new ServiceCollection().AddGridOptions(configuration, executable).BuildServiceProvider();
        try
        {
            return services.GetRequiredService<IOptions<GridOptions>>().Value;
        }
        catch (OptionsValidationException e)
        {
            throw new GridConfigurationException(string.Join("; ", e.Failures), e);
        }
        catch (InvalidOperationException e)
        {
            // The binder: "Failed to convert configuration value at 'Grid:Http:Port' to type 'System.Int32'."
            var detail = e.InnerException is { } inner ? " " + inner.Message : "";
            throw new GridConfigurationException((e.Message + detail).ReplaceLineEndings(" "), e);
        }
    }
}
