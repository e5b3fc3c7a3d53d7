using TorchSharp;
using static TorchSharp.torch;

namespace Grid.ModelCore.Runtime;

/// <summary>
/// Every <see cref="Scalar"/> model-core hands to libtorch, owned for as long as libtorch may read it.
/// <para>TorchSharp 0.107 turns a number passed where a <see cref="Scalar"/> is expected (<c>masked_fill(m, -inf)</c>,
/// <c>t * 0.5</c>, <c>t.pow(2)</c>, <c>t + eps</c>, and the hidden <c>alpha = 1</c> of every <c>a + b</c> and
/// <c>a - b</c>) into a new native <c>c10::Scalar</c> that nothing owns: its wrapper's only reference is dropped as
/// soon as its handle is read, before the P/Invoke that uses it, and its finalizer deletes the native object. In
/// optimised code a garbage collection started by any other thread while the inference thread is inside that native
/// call (under load: Kestrel, Orleans and the scheduler allocate all the time) finalizes the wrapper and frees the
/// <c>c10::Scalar</c> while libtorch still reads it: <c>Scalar::toFloat</c> then finds a garbage tag and throws
/// "Expected false to be true" (or reads a wrong value). Model-core therefore never converts a number implicitly:
/// constants live here for the process lifetime, per-layer values are fields of their module, and numbers that vary
/// are held by a <c>using</c> across the call. <c>LayeringTests</c> fails the build's tests on any implicit conversion.</para>
/// </summary>
public static class Scalars
{
    /// <summary>Integer 1: the <c>alpha</c> of <see cref="Add(Tensor, Tensor)"/>.</summary>
    public static readonly Scalar One = 1.ToScalar();

    /// <summary>Integer 0.</summary>
    public static readonly Scalar Zero = 0.ToScalar();

    /// <summary>Float 0.</summary>
    public static readonly Scalar ZeroFloat = 0.0.ToScalar();

    /// <summary>Float negative infinity: the fill of masked attention scores.</summary>
    public static readonly Scalar NegativeInfinity = float.NegativeInfinity.ToScalar();

    /// <summary><paramref name="a"/> + <paramref name="b"/> with an owned <c>alpha</c> (TorchSharp's <c>+</c> creates an unowned one).</summary>
    public static Tensor Add(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary><paramref name="a"/> + <paramref name="b"/> for an owned scalar <paramref name="b"/>.</summary>
    public static Tensor Add(this Tensor a, Scalar b) => a.add(b, One);
}
