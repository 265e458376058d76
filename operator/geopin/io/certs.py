"""Serving certificates of geopin's HTTPS servers (the admission webhook, secure metrics).

Self-signed ones are made with ``cryptography`` (Kopf's self-signed path relies on oscrypto, which fails on
OpenSSL 3). :class:`ServingTls` serves either a mounted directory (``tls.crt``/``tls.key``, e.g. a
cert-manager Secret), re-read when it changes so a rotation needs no restart, or a self-signed pair
made at start-up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ServingCertificate", "ServingTls", "self_signed"]

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 10.0


@dataclass(frozen=True)
class ServingCertificate:
    ca_pem: bytes  # goes into the webhook configuration's caBundle
    cert_pem: bytes
    key_pem: bytes = b""


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def self_signed(hosts: tuple[str, ...], days: int = 365) -> ServingCertificate:
    """A private CA and a serving certificate for ``hosts`` (DNS names or IP addresses)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geopin-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


class ServingTls:
    """The server side of TLS for one HTTPS server: ``context`` for the listener, ``ca_pem`` for its clients."""

    def __init__(self, name: str, cert_dir: str | None, hosts: tuple[str, ...]) -> None:
        self.name = name
        self.cert_dir = Path(cert_dir) if cert_dir else None
        self.hosts = hosts
        self.ca_pem = b""
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._mtime = 0.0
        self._reloader: asyncio.Task[None] | None = None
        self._generated: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        """Load the certificate; a mounted one is then checked for changes every ``RELOAD_SECONDS``."""
        self._load()
        if self.cert_dir is not None:
            self._reloader = asyncio.create_task(self._reload(), name=f"geopin-{self.name}-certs")

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
        if self._generated is not None:
            self._generated.cleanup()

    def _load(self) -> None:
        if self.cert_dir is None:
            made = self_signed(self.hosts)
            self._generated = tempfile.TemporaryDirectory(prefix=f"geopin-{self.name}-")
            directory = Path(self._generated.name)
            (directory / "tls.crt").write_bytes(made.cert_pem)
            (directory / "tls.key").write_bytes(made.key_pem)
            (directory / "tls.key").chmod(0o600)
            self.ca_pem = made.ca_pem
            self.context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
            return
        cert, key = self.cert_dir / "tls.crt", self.cert_dir / "tls.key"
        self._mtime = max(cert.stat().st_mtime, key.stat().st_mtime)
        # New handshakes use the new pair; open connections keep theirs.
        self.context.load_cert_chain(cert, key)
        ca = self.cert_dir / "ca.crt"
        self.ca_pem = ca.read_bytes() if ca.exists() else cert.read_bytes()

    async def _reload(self) -> None:
        assert self.cert_dir is not None
        while True:
            await asyncio.sleep(RELOAD_SECONDS)  # the rotation check's period
            try:
                paths = (self.cert_dir / "tls.crt", self.cert_dir / "tls.key")
                if max(p.stat().st_mtime for p in paths) != self._mtime:
                    self._load()
                    logger.info("%s: certificate reloaded from %s", self.name, self.cert_dir)
            except (OSError, ssl.SSLError) as e:
                logger.warning("%s: cannot reload the certificate from %s: %s", self.name, self.cert_dir, e)
