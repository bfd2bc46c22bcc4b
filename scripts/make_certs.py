"""Throwaway credentials for a TLS + SuperNode-authenticated deployment: a CA, a SuperLink certificate signed by
it (valid for the given host names / IPs), and one key pair per SuperNode. For tests and trials, not production:
the keys are unencrypted and the CA lives beside them.

    python scripts/make_certs.py <folder> --nodes 3 [--hosts 127.0.0.1 localhost my.server.org]

writes <folder>/ca.crt, ca.key, server.pem, server.key (PEM, ECDSA P-384) and per node node-<i>.key (OpenSSH
private key, what `flower-supernode --auth-supernode-private-key` reads) with node-<i>.pub (OpenSSH public key,
what `flwr supernode register` takes). Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedkd throwaway"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def credentials(hosts: list[str], num_nodes: int) -> dict[str, bytes]:
    """File name -> content of every credential."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedkd throwaway CA")).issuer_name(_name("fedkd throwaway CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(VALID_DAYS))
              .add_extension(_san(hosts), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA384()))
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
    }
    for i in range(num_nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        files[f"node-{i}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption())  # the SuperNode reads OpenSSH
        files[f"node-{i}.pub"] = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                               serialization.PublicFormat.OpenSSH)
    return files


def write_credentials(folder: Path, hosts: list[str], num_nodes: int) -> dict[str, Path]:
    """Write every credential into ``folder`` (refusing to overwrite any); returns name -> path."""
    files = credentials(hosts, num_nodes)
    taken = [name for name in files if (folder / name).exists()]
    if taken:
        raise FileExistsError(f"{folder} already holds {taken}; pick an empty folder (nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        path.chmod(0o600 if name.endswith(".key") else 0o644)
        paths[name] = path
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make")
    parser.add_argument("--hosts", nargs="+", default=["127.0.0.1", "localhost"],
                        help="names and IPs the SuperLink certificate is valid for (the address nodes dial)")
    args = parser.parse_args(argv)
    try:
        paths = write_credentials(args.folder, args.hosts, args.nodes)
    except FileExistsError as err:
        print(f"make_certs: {err}", file=sys.stderr)
        return 2
    print(f"make_certs: wrote {', '.join(sorted(paths))} to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
