"""Self-signed certificates made at test time with the openssl command (no files committed)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client that trusts exactly this certificate."""
        context = ssl.create_default_context(cafile=str(self.cert_file))
        context.check_hostname = False  # the tests connect to 127.0.0.1 by address
        return context


def make_certificate(directory: Path, name: str, days: int = 1) -> Certificate:
    """A fresh EC key and a self-signed certificate for localhost and 127.0.0.1, valid for
    `days` (one, unless told)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


def not_after(certificate: Certificate) -> float:
    """When it expires, as openssl reads it (Unix time)."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(certificate.cert_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(ssl.cert_time_to_seconds(out.strip().removeprefix("notAfter=")))
