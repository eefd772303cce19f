"""A throwaway CA that issues client certificates with chosen subject alternative names, for the identity tests
(tests/support/tls_material.py's Authority issues them; it also makes the fixed set of the TLS tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from modelplane.transport import TransportSecurity
from tests.support.tls_material import Authority


@dataclass(frozen=True)
class IssuingCa:
    folder: Path
    authority: Authority

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, label: str, sans: list[x509.GeneralName] | None, *, server: bool = False) -> tuple[Path, Path]:
        """A certificate for ``sans`` (common name ``label``, never used as an identity; None: localhost and
        127.0.0.1): (cert, key) files."""
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert_file, key_file = self.folder / f"{label}.pem", self.folder / f"{label}-key.pem"
        cert, key, _ = self.authority.issue(label, usage, sans)
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        return cert_file, key_file

    def server_flags(self) -> list[str]:
        """Flags for a server on 127.0.0.1 with mutual TLS against this CA."""
        cert, key = self.issue("server", None, server=True)
        return [f"--tls-cert={cert}", f"--tls-key={key}", f"--tls-ca={self.ca_file}"]

    def client(self, label: str, sans: list[x509.GeneralName]) -> TransportSecurity:
        cert, key = self.issue(label, sans)
        return TransportSecurity(ca_file=self.ca_file, cert_file=cert, key_file=key)


def new_ca(folder: Path) -> IssuingCa:
    folder.mkdir(parents=True, exist_ok=True)
    ca = IssuingCa(folder, Authority.new("modelplane identity test CA"))
    ca.ca_file.write_bytes(ca.authority.pem())
    return ca
