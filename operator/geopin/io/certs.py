"""Serving certificates of geopin's HTTPS servers (the admission webhook, secure metrics).

Self-signed ones are made with ``cryptography`` (Kopf's self-signed path relies on oscrypto, which fails on
OpenSSL 3). :class:`ServingTls` serves one of:

- a mounted directory (``tls.crt``/``tls.key``, e.g. a cert-manager Secret), re-read when it changes so a
  rotation needs no restart;
- a pair every replica shares (:func:`shared_certificate`): a Secret geopin makes itself, so that the
  webhook works with several replicas and no certificate tooling (the chart's default);
- a self-signed pair made at start-up (one replica, tests).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from geopin.io.kube import KubeAPI

__all__ = ["ServingCertificate", "ServingTls", "SharedCertificateError", "self_signed", "shared_certificate"]

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 10.0
# A shared pair is made once and never rotated by geopin (as kube-webhook-certgen's default): the API
# server is its only client and trusts exactly this CA. To rotate, delete the Secret and restart the
# replicas; or mount a cert-manager Secret instead (--webhook-cert-dir).
SHARED_DAYS = 3650


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


class SharedCertificateError(Exception):
    """The shared serving Secret cannot be read, made or used; says which and what to do."""


def _secret_body(name: str, made: ServingCertificate) -> dict[str, object]:
    def encoded(pem: bytes) -> str:
        return base64.b64encode(pem).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "geopin"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": encoded(made.cert_pem), "tls.key": encoded(made.key_pem), "ca.crt": encoded(made.ca_pem)},
    }


def _from_secret(where: str, secret: object) -> ServingCertificate:
    data = (secret.get("data") if isinstance(secret, dict) else None) or {}
    try:
        pems = {key: base64.b64decode(data[key], validate=True) for key in ("tls.crt", "tls.key") if key in data}
        ca = base64.b64decode(data["ca.crt"], validate=True) if "ca.crt" in data else pems.get("tls.crt", b"")
    except (binascii.Error, TypeError) as e:
        raise SharedCertificateError(f"Secret {where} holds a value that is not base64 ({e}); delete it") from None
    if set(pems) != {"tls.crt", "tls.key"}:
        raise SharedCertificateError(f"Secret {where} has no tls.crt and tls.key; delete it and geopin makes one")
    return ServingCertificate(ca_pem=ca, cert_pem=pems["tls.crt"], key_pem=pems["tls.key"])


async def shared_certificate(kube: KubeAPI, namespace: str, name: str, hosts: tuple[str, ...]) -> ServingCertificate:
    """The pair every replica serves, from Secret ``namespace/name``; the first replica to start makes it
    (self-signed for ``hosts``), and one that loses that race reads the winner's."""
    where, path = f"{namespace}/{name}", f"/api/v1/namespaces/{namespace}/secrets"
    try:
        try:
            return _from_secret(where, await kube.request(f"{path}/{name}", "GET"))
        except ApiException as e:
            if e.status != 404:
                raise
        made = self_signed(hosts, days=SHARED_DAYS)
        try:
            await kube.request(path, "POST", _secret_body(name, made))
        except ApiException as e:
            if e.status != 409:
                raise
            return _from_secret(where, await kube.request(f"{path}/{name}", "GET"))
    except ApiException as e:
        raise SharedCertificateError(
            f"cannot read or create the webhook's Secret {where} (HTTP {e.status}; check geopin's RBAC: "
            "get and create of Secrets in its namespace)"
        ) from None
    logger.info("webhook: made the serving certificate every replica shares, Secret %s", where)
    return made


class ServingTls:
    """The server side of TLS for one HTTPS server: ``context`` for the listener, ``ca_pem`` for its clients."""

    def __init__(
        self, name: str, cert_dir: str | None, hosts: tuple[str, ...], certificate: ServingCertificate | None = None
    ) -> None:
        """``certificate``: a pair to serve as it is (a shared one); else ``cert_dir``, else self-signed."""
        self.name = name
        self.cert_dir = Path(cert_dir) if cert_dir else None
        self.hosts = hosts
        self.certificate = certificate
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
            made = self.certificate or self_signed(self.hosts)
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
