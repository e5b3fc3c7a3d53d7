using Grid.ModelCore.Cache;
using Grid.ModelCore.Model;
using Xunit;

namespace Grid.Tests;

/// <summary>The latent-cache budget: an explicit byte count, or a share of the host's memory left after the weights.</summary>
public class CacheBudgetTests
{
    [Fact]
    public void AnExplicitByteCountWins()
    {
        Assert.Equal(123L << 20, CacheBudget.Resolve(123L << 20, 0.01, out var reason));
        Assert.Contains("CacheMaxBytes", reason);
    }

    [Fact]
    public void TheDefaultIsWhatIsLeftOfTheHostsShareAfterWhatIsResident()
    {
        long host = CacheBudget.HostMemoryBytes, resident = CacheBudget.ResidentBytes;
        Assert.True(host > resident, $"host {host} resident {resident}");
        var budget = CacheBudget.Resolve(null, 0.9, out var reason);
        // Never more than the process's share minus what it already holds (resident only grows between the two reads).
        Assert.InRange(budget, CacheBudget.MinimumBytes, (long)(0.9 * host) - resident);
        if (CacheBudget.AvailableBytes() is long available) Assert.True(budget <= (long)(0.9 * Math.Max(available, host)));
        Assert.Contains("MemoryUtilization", reason);
        // A smaller share gives a smaller budget, and a share below what is resident leaves the floor.
        Assert.True(CacheBudget.Resolve(null, 0.45, out _) < budget);
        var tiny = (double)resident / host / 2;
        Assert.Equal(CacheBudget.MinimumBytes, CacheBudget.Resolve(null, tiny, out _));
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(1.5)]
    [InlineData(double.NaN)]
    public void AUtilizationOutsideZeroToOneIsRefused(double utilization) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => CacheBudget.Resolve(null, utilization, out _));

    [Fact]
    public void AModelLoadedWithoutAByteCountSizesItsCacheFromMemory()
    {
        using var model = DeepseekV2Model.Load(Golden.Dir("full_f32"), new ModelLoadOptions { MemoryUtilization = 0.5 });
        var cache = model.Cache!;
        Assert.Contains("MemoryUtilization", model.CacheBudgetReason);
        Assert.Equal(LatentCache.BlocksFor(model.CacheBudgetBytes, model.Config.NumHiddenLayers, model.Config.LatentDim, model.Dtype, cache.BlockSize), cache.MaxBlocks);
        Assert.InRange(model.CacheBudgetBytes, CacheBudget.MinimumBytes, (long)(0.5 * CacheBudget.HostMemoryBytes));
        // Reserved lazily: the pools start small whatever the budget.
        Assert.True(cache.BytesReserved < model.CacheBudgetBytes);

        using var capped = DeepseekV2Model.Load(Golden.Dir("full_f32"), new ModelLoadOptions { CacheMaxBytes = 1L << 20, CacheBlockSize = 16 });
        Assert.Equal((1L << 20) / capped.Cache!.BytesPerBlock, capped.Cache.MaxBlocks);
    }
}
