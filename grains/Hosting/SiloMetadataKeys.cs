using Grid.Configuration;

namespace Grid.Grains.Hosting;

/// <summary>Silo metadata keys a silo publishes so placement can find what it serves.</summary>
public static class SiloMetadataKeys
{
    public const string ExpertGroups = "grid.expert-groups";
    public const string Attention = "grid.attention";
    /// <summary>"true" on a silo that loads any expert group on demand (<c>Grid:Silo:Elastic</c>).</summary>
    public const string Elastic = "grid.elastic";

    public static Dictionary<string, string> For(SiloOptions o) => new()
    {
        [ExpertGroups] = string.Join(",", o.ExpertGroups),
        [Attention] = o.Attention ? "true" : "false",
        [Elastic] = o.Elastic ? "true" : "false",
    };
}
