using System;
using System.IO;
using System.Linq;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

/// <summary>
/// Marks libLibTorchSharp.so's need for GLIBCXX_3.4.32 as weak where the host libstdc++ lacks it.
/// ELF64 little-endian only; idempotent; leaves files untouched when the host has the version.
/// </summary>
public class PatchLibTorchSharpGlibcxx : Task
{
    public string Directory { get; set; } = "";

    const uint VersionHash = 0x0297f842; // elf_hash("GLIBCXX_3.4.32")
    const ushort VerFlgWeak = 2;
    const uint ShtGnuVerneed = 0x6ffffffe;
    const string NeededVersion = "GLIBCXX_3.4.32";

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory)) return true;
        var files = System.IO.Directory.GetFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories);
        if (files.Length == 0) return true;
        if (HostHasVersion())
        {
            Log.LogMessage(MessageImportance.Low, "libstdc++ provides " + NeededVersion + "; libLibTorchSharp.so left as is");
            return true;
        }
        foreach (var file in files)
        {
            var result = Patch(file);
            Log.LogMessage(MessageImportance.Normal, "libLibTorchSharp.so " + NeededVersion + " need: " + result + " (" + file + ")");
        }
        return !Log.HasLoggedErrors;
    }

    static bool HostHasVersion()
    {
        string[] candidates = {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6" };
        var lib = candidates.FirstOrDefault(File.Exists);
        if (lib == null) return false;
        var needle = Encoding.ASCII.GetBytes(NeededVersion + "\0");
        var bytes = File.ReadAllBytes(lib);
        for (int i = 0; i + needle.Length <= bytes.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && bytes[i + j] == needle[j]) j++;
            if (j == needle.Length) return true;
        }
        return false;
    }

    string Patch(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 64 || bytes[0] != 0x7f || bytes[1] != (byte)'E' || bytes[4] != 2 || bytes[5] != 1)
            return "not an ELF64 little-endian file, skipped";
        ulong shoff = BitConverter.ToUInt64(bytes, 0x28);
        int shentsize = BitConverter.ToUInt16(bytes, 0x3A);
        int shnum = BitConverter.ToUInt16(bytes, 0x3C);
        for (int s = 0; s < shnum; s++)
        {
            int sh = (int)shoff + s * shentsize;
            uint type = BitConverter.ToUInt32(bytes, sh + 4);
            if (type != ShtGnuVerneed) continue;
            int offset = (int)BitConverter.ToUInt64(bytes, sh + 0x18);
            int count = (int)BitConverter.ToUInt32(bytes, sh + 0x2C); // sh_info = number of Verneed entries
            int vn = offset;
            for (int n = 0; n < count; n++)
            {
                int cnt = BitConverter.ToUInt16(bytes, vn + 2);
                int aux = vn + (int)BitConverter.ToUInt32(bytes, vn + 8);
                for (int a = 0; a < cnt; a++)
                {
                    uint hash = BitConverter.ToUInt32(bytes, aux);
                    if (hash == VersionHash)
                    {
                        ushort flags = BitConverter.ToUInt16(bytes, aux + 4);
                        if ((flags & VerFlgWeak) != 0) return "already weak";
                        flags |= VerFlgWeak;
                        bytes[aux + 4] = (byte)(flags & 0xff);
                        bytes[aux + 5] = (byte)(flags >> 8);
                        // Write through a temp file so a hard-linked or cached original is never modified in place.
                        var tmp = path + ".grid-patch.tmp";
                        File.WriteAllBytes(tmp, bytes);
                        File.Copy(tmp, path, true);
                        File.Delete(tmp);
                        return "marked weak";
                    }
                    uint next = BitConverter.ToUInt32(bytes, aux + 12);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint vnNext = BitConverter.ToUInt32(bytes, vn + 12);
                if (vnNext == 0) break;
                vn += (int)vnNext;
            }
        }
        return "no " + NeededVersion + " need found";
    }
}
