"""Throwaway certificates, made at run time with the openssl command line: a CA, a server
certificate for localhost and 127.0.0.1, and a client certificate. Never reused, never committed."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT_S = 30.0  # seconds; one EC key and certificate take milliseconds


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S)


def issue(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> None:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext_file))


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for localhost and a client certificate, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.crt"),
            "-days", "2", "-subj", "/CN=dermserve throwaway CA")
    issue(directory, "server", directory / "ca.crt", directory / "ca.key",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(directory, "client", directory / "ca.crt", directory / "ca.key",
          "extendedKeyUsage=clientAuth\n")
    return Pki(*(directory / name for name in ("ca.crt", "server.crt", "server.key",
                                               "client.crt", "client.key")))


def client_certificate(pki: Pki, name: str) -> tuple[Path, Path]:
    """Another client certificate (subject CN=`name`) from the same CA, another mutual-TLS
    identity: (certificate, key)."""
    directory = pki.ca.parent
    issue(directory, name, pki.ca, directory / "ca.key", "extendedKeyUsage=clientAuth\n")
    return directory / f"{name}.crt", directory / f"{name}.key"
