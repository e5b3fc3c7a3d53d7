using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grid.Configuration;
using Orleans.Connections.Security;

namespace Grid.Grains.Hosting;

/// <summary>
/// The certificates of <c>Grid:Cluster:Tls</c>: this process's certificate (with its private key) and the cluster CA
/// its peers' certificates must chain to. Orleans' TLS (Microsoft.Orleans.Connections.Security) runs on every
/// connection with a certificate required from both sides and <see cref="IsFromClusterCa"/> as the only validation.
/// </summary>
public sealed class ClusterTls
{
    ClusterTls(X509Certificate2 certificate, X509Certificate2Collection authorities)
    {
        Certificate = certificate;
        Authorities = authorities;
    }

    /// <summary>This process's certificate (has its private key).</summary>
    public X509Certificate2 Certificate { get; }
    /// <summary>The cluster CA certificate(s).</summary>
    public X509Certificate2Collection Authorities { get; }

    /// <summary>Loads and checks the files of <paramref name="o"/> (TLS must be on: <see cref="ClusterTlsOptions.IsEnabled"/>).</summary>
    /// <exception cref="GridConfigurationException">A file is missing or unreadable, the certificate has no private key, or it is not issued by the cluster CA.</exception>
    public static ClusterTls Load(ClusterTlsOptions o)
    {
        if (!o.IsEnabled) throw new GridConfigurationException("Grid:Cluster:Tls:CertificatePath is not set");
        if (string.IsNullOrEmpty(o.CaPath)) throw new GridConfigurationException("Grid:Cluster:Tls:CaPath must be set when Grid:Cluster:Tls:CertificatePath is (the cluster CA that authenticates peers)");
        var authorities = new X509Certificate2Collection();
        try { authorities.ImportFromPemFile(o.CaPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            throw new GridConfigurationException($"Grid:Cluster:Tls:CaPath: cannot read '{o.CaPath}': {e.Message}", e);
        }
        if (authorities.Count == 0) throw new GridConfigurationException($"Grid:Cluster:Tls:CaPath: '{o.CaPath}' holds no PEM certificate");
        bool pkcs12 = o.CertificatePath!.EndsWith(".pfx", StringComparison.OrdinalIgnoreCase) || o.CertificatePath.EndsWith(".p12", StringComparison.OrdinalIgnoreCase);
        if (!pkcs12 && string.IsNullOrEmpty(o.KeyPath) && File.Exists(o.CertificatePath) && !File.ReadAllText(o.CertificatePath).Contains("PRIVATE KEY-----", StringComparison.Ordinal))
            throw new GridConfigurationException($"Grid:Cluster:Tls:CertificatePath: '{o.CertificatePath}' has no private key (set Grid:Cluster:Tls:KeyPath)");
        X509Certificate2 certificate;
        try { certificate = LoadCertificate(o); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            throw new GridConfigurationException($"Grid:Cluster:Tls:CertificatePath: cannot load '{o.CertificatePath}'{(string.IsNullOrEmpty(o.KeyPath) ? "" : $" with key '{o.KeyPath}'")}: {e.Message}", e);
        }
        if (!certificate.HasPrivateKey)
            throw new GridConfigurationException($"Grid:Cluster:Tls:CertificatePath: '{o.CertificatePath}' has no private key (set Grid:Cluster:Tls:KeyPath)");
        var tls = new ClusterTls(certificate, authorities);
        if (!tls.IsFromClusterCa(certificate, out var problem))
            throw new GridConfigurationException($"Grid:Cluster:Tls:CertificatePath: {certificate.Subject} is not accepted by the cluster CA in '{o.CaPath}': {problem}");
        return tls;
    }

    static X509Certificate2 LoadCertificate(ClusterTlsOptions o)
    {
        var path = o.CertificatePath!;
        var password = string.IsNullOrEmpty(o.CertificatePassword) ? null : o.CertificatePassword;
        if (path.EndsWith(".pfx", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".p12", StringComparison.OrdinalIgnoreCase))
            return X509CertificateLoader.LoadPkcs12FromFile(path, password, X509KeyStorageFlags.EphemeralKeySet);
        var keyPath = string.IsNullOrEmpty(o.KeyPath) ? null : o.KeyPath;
        return password is null ? X509Certificate2.CreateFromPemFile(path, keyPath) : X509Certificate2.CreateFromEncryptedPemFile(path, password, keyPath);
    }

    /// <summary>Whether <paramref name="remote"/> chains to a cluster CA (valid now; revocation not checked: no CRL in a cluster).</summary>
    public bool IsFromClusterCa(X509Certificate2 remote, out string problem)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(Authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationFlags = X509VerificationFlags.NoFlag;
        if (chain.Build(remote))
        {
            problem = "";
            return true;
        }
        problem = string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).DefaultIfEmpty("untrusted chain"));
        return false;
    }

    /// <summary>Orleans' TLS options: this certificate, a peer certificate required both ways, validated against the cluster CA.</summary>
    public void Configure(TlsOptions options)
    {
        options.LocalCertificate = Certificate;
        options.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.CheckCertificateRevocation = false;
        options.RemoteCertificateValidation = (certificate, _, _) =>
        {
            // Name mismatches are expected (peers are reached by IP); the chain to the cluster CA is what counts.
            return certificate is not null && IsFromClusterCa(certificate, out _);
        };
    }
}
