namespace Grid.ModelCore.Weights;

/// <summary>
/// Weight-loading progress thinned to one report per tenth of the tensors (and the last one), delivered on the
/// loading thread in order (unlike <see cref="Progress{T}"/>, which posts to the thread pool).
/// </summary>
public sealed class DecileProgress(Action<LoadProgress> report) : IProgress<LoadProgress>
{
    int _lastDecile = -1;

    public void Report(LoadProgress value)
    {
        int decile = value.TensorsTotal == 0 ? 10 : (int)(10L * value.TensorsDone / value.TensorsTotal);
        if (decile == _lastDecile) return;
        _lastDecile = decile;
        report(value);
    }
}
