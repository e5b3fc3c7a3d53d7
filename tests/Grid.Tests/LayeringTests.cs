using System.Reflection;
using Grid.ChatTemplates;
using Grid.Grains.Contracts;
using Xunit;

namespace Grid.Tests;

/// <summary>Dependencies point one way: the grid's wire contract and the chat-template engine stand alone.</summary>
public sealed class LayeringTests
{
    static string[] References(Assembly a) => a.GetReferencedAssemblies().Select(r => r.Name!).ToArray();

    [Fact]
    public void GrainContractsReferenceNeitherTorchSharpNorModelCore()
    {
        var refs = References(typeof(IAttentionGrain).Assembly);
        Assert.Contains(refs, r => r.StartsWith("Orleans", StringComparison.Ordinal));
        Assert.DoesNotContain(refs, r => r.StartsWith("TorchSharp", StringComparison.Ordinal));
        Assert.DoesNotContain(refs, r => r.StartsWith("Grid.", StringComparison.Ordinal));
    }

    [Fact]
    public void ChatTemplatesReferenceNoGridTorchOrOrleansAssembly()
    {
        var refs = References(typeof(ChatTemplate).Assembly);
        Assert.DoesNotContain(refs, r => r.StartsWith("TorchSharp", StringComparison.Ordinal) || r.StartsWith("Orleans", StringComparison.Ordinal) || r.StartsWith("Grid.", StringComparison.Ordinal));
    }

    [Fact]
    public void ModelCoreDoesNotReferenceOrleans()
    {
        var refs = References(typeof(Grid.ModelCore.Serving.IStepExecutor).Assembly);
        Assert.DoesNotContain(refs, r => r.StartsWith("Orleans", StringComparison.Ordinal));
    }
}
