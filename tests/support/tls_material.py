"""A throwaway CA with server and client certificates, for TLS tests on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Authority:
    """A CA that issues leaf certificates for 127.0.0.1 and localhost (each with a fresh key and serial)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, common_name: str = "modelplane test CA") -> Authority:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, common_name: str, usage: x509.ObjectIdentifier, sans: Sequence[x509.GeneralName] | None = None
    ) -> tuple[bytes, bytes, int]:
        """A leaf certificate: (certificate PEM, private key PEM, serial number). ``sans`` defaults to localhost
        and 127.0.0.1; an empty list gives a certificate without subject alternative names."""
        if sans is None:
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.serial_number

    def issue_to(self, cert_path: Path, key_path: Path, common_name: str, usage: x509.ObjectIdentifier) -> int:
        cert, key, serial = self.issue(common_name, usage)
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        return serial


def make_tls_files(folder: Path, authority: Authority | None = None) -> TlsFiles:
    authority = authority or Authority.new()
    files = TlsFiles(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
    )
    files.ca.write_bytes(authority.pem())
    authority.issue_to(files.server_cert, files.server_key, "scheduler", ExtendedKeyUsageOID.SERVER_AUTH)
    authority.issue_to(files.client_cert, files.client_key, "operator", ExtendedKeyUsageOID.CLIENT_AUTH)
    return files
