using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Grid.Tests.Cluster;

/// <summary>
/// Test PKI made with <see cref="CertificateRequest"/>: a CA and leaf certificates it signs (server and client
/// authentication, IP 127.0.0.1), written as PEM files (<c>name.crt</c>, <c>name.key</c>) into a folder, the layout of
/// a Kubernetes TLS secret (ca.crt, tls.crt, tls.key).
/// </summary>
public sealed class TestCertificates
{
    readonly ECDsa _caKey;
    readonly X509Certificate2 _ca;

    public TestCertificates(string folder, string caName)
    {
        Folder = folder;
        Directory.CreateDirectory(folder);
        _caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={caName}", _caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        _ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-2), DateTimeOffset.UtcNow.AddDays(365));
        CaPath = Path.Combine(folder, "ca.crt");
        File.WriteAllText(CaPath, _ca.ExportCertificatePem());
    }

    public string Folder { get; }
    /// <summary>The CA certificate (PEM).</summary>
    public string CaPath { get; }

    /// <summary>A leaf certificate signed by this CA: (certificate PEM path, private key PEM path).</summary>
    public (string Certificate, string Key) Issue(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));   // server and client authentication
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName(name);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_ca, true, false));
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var certificate = request.Create(_ca, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30), serial);
        var certificatePath = Path.Combine(Folder, name + ".crt");
        var keyPath = Path.Combine(Folder, name + ".key");
        File.WriteAllText(certificatePath, certificate.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return (certificatePath, keyPath);
    }

    /// <summary>The <c>Grid__Cluster__Tls__*</c> environment of a process using leaf <paramref name="name"/> of this CA.</summary>
    public Dictionary<string, string> Environment(string name)
    {
        var (certificate, key) = Issue(name);
        return new()
        {
            ["Grid__Cluster__Tls__CertificatePath"] = certificate,
            ["Grid__Cluster__Tls__KeyPath"] = key,
            ["Grid__Cluster__Tls__CaPath"] = CaPath,
        };
    }
}
