"""A throwaway CA that issues client certificates with chosen subject alternative names, for the identity tests
(tests/tls_material.py makes the fixed set of the TLS tests)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelplane.transport import TransportSecurity


@dataclass(frozen=True)
class IssuingCa:
    folder: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, label: str, sans: list[x509.GeneralName], *, server: bool = False) -> tuple[Path, Path]:
        """A certificate for ``sans`` (common name ``label``, never used as an identity): (cert, key) files."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.folder / f"{label}.pem", self.folder / f"{label}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file

    def server_flags(self) -> list[str]:
        """Flags for a server on 127.0.0.1 with mutual TLS against this CA."""
        cert, key = self.issue(
            "server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], server=True
        )
        return [f"--tls-cert={cert}", f"--tls-key={key}", f"--tls-ca={self.ca_file}"]

    def client(self, label: str, sans: list[x509.GeneralName]) -> TransportSecurity:
        cert, key = self.issue(label, sans)
        return TransportSecurity(ca_file=self.ca_file, cert_file=cert, key_file=key)


def new_ca(folder: Path) -> IssuingCa:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelplane identity test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca = IssuingCa(folder, cert, key)
    ca.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca
