"""Throwaway TLS material for tests: a private CA and a server certificate it
signed for ``127.0.0.1`` and ``localhost``.

Everything is generated at test time (into a test's ``tmp_path``) with the
``cryptography`` package, which ``twisted[tls]`` installs; no key material is
ever committed. Keys are EC P-256: generating them is instant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerTLS:
    """Paths of one generated set: ``ca`` (the root CA certificate a client
    trusts), ``key`` (the server's private key), ``cert`` (the server's
    certificate) and ``chain`` (the intermediate CA certificate between them, or
    None when the root signed the server's certificate itself)."""

    ca: Path
    key: Path
    cert: Path
    chain: Path | None = None

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> str:
        """A ``ridgeline server --listen`` endpoint string serving this
        certificate (and its chain). The paths must not hold ``:``."""
        text = f"ssl:{port}:interface={interface}:privateKey={self.key}:certKey={self.cert}"
        return text + (f":extraCertChain={self.chain}" if self.chain else "")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ridgeline tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _ca_extensions(builder: x509.CertificateBuilder, key, path_length: int) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def _builder(subject: x509.Name, issuer: x509.Name, key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, object, x509.Certificate]:
    """A self-signed CA in ``directory/<name>.pem``; also returns its key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"Ridgeline test CA {name}")
    cert = _ca_extensions(_builder(subject, subject, key, 2), key, 1).sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    path = _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_tls(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                    intermediate: bool = False) -> ServerTLS:
    """A CA and a server certificate for ``hosts`` (IP addresses and DNS names,
    all as subjectAltName entries), written into ``directory``. With
    ``intermediate`` the CA signs an intermediate CA that signs the server's
    certificate, and the server must send the intermediate (``chain``)."""
    ca_path, signer_key, signer = make_ca(directory)
    chain = None
    if intermediate:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _ca_extensions(_builder(_name("Ridgeline test intermediate CA"), signer.subject, key, 2), key, 0)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        signer = builder.sign(signer_key, hashes.SHA256())
        signer_key = key
        chain = _write(directory / "intermediate.pem", signer.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        _builder(_name(hosts[0]), signer.subject, key, 1)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        .sign(signer_key, hashes.SHA256())
    )
    return ServerTLS(
        ca=ca_path,
        key=_write(directory / "server-key.pem", _pem_key(key), 0o600),
        cert=_write(directory / "server-cert.pem", cert.public_bytes(serialization.Encoding.PEM)),
        chain=chain,
    )
