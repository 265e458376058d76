"""A throwaway certificate authority for one test run, made with `cryptography`.

ECDSA P-256 keys throughout: they are generated in microseconds (RSA takes tens of milliseconds) and
every component here (Go's crypto/tls, OpenSSL behind Python's ssl module) accepts them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)
_BACKDATE = dt.timedelta(minutes=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files on disk and in memory."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class KeyPair:
    """A bare key pair (the service-account token signing key)."""

    private_path: Path
    public_path: Path


def write_key_pair(directory: Path, name: str) -> KeyPair:
    """Write `<name>.key` (PKCS#8) and `<name>.pub` (SubjectPublicKeyInfo) into `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(
        private_path=_write(directory / f"{name}.key", _key_pem(key), private=True),
        public_path=_write(directory / f"{name}.pub", public),
    )


class CA:
    """A self-signed root that issues server and client certificates into `directory`."""

    def __init__(self, directory: Path, common_name: str = "geopin-test-ca") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem: bytes = self._cert.public_bytes(serialization.Encoding.PEM)
        self.cert_path: Path = _write(self.directory / "ca.crt", self.cert_pem)
        self.key_path: Path = _write(self.directory / "ca.key", _key_pem(self._key), private=True)

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organizations: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> CertPair:
        """Issue `<name>.crt`/`<name>.key`; `hosts` are IP addresses or DNS names for the SAN.

        A name issued before gets new files (`<name>-2.crt`, ...): a pair is never replaced on disk, so a
        server restarted later (a replica healed after a kill) reloads its own certificate, not the
        one a later server of the same name was issued.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        stem = self._claim(name)
        return CertPair(
            cert_path=_write(self.directory / f"{stem}.crt", cert_pem),
            key_path=_write(self.directory / f"{stem}.key", key_pem, private=True),
            cert_pem=cert_pem,
            key_pem=key_pem,
        )

    def _claim(self, name: str) -> str:
        """The first free file stem for `name`, reserved by creating its `.crt` exclusively."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in itertools.count(1):
            stem = name if attempt == 1 else f"{name}-{attempt}"
            try:
                (self.directory / f"{stem}.crt").touch(exist_ok=False)
            except FileExistsError:
                continue
            return stem
        raise AssertionError("unreachable")

    def issue_server(
        self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *, client: bool = False
    ) -> CertPair:
        """A serving certificate for `hosts` (loopback by default)."""
        return self.issue(name, common_name=hosts[0], hosts=hosts, server=True, client=client)

    def issue_client(self, name: str, user: str, groups: tuple[str, ...] = ()) -> CertPair:
        """A client certificate; Kubernetes reads CN as the user name and O as the groups."""
        return self.issue(name, common_name=user, organizations=groups, client=True)

    def ssl_context(self, client: CertPair | None = None) -> ssl.SSLContext:
        """A client-side context that trusts only this CA (and presents `client` if given)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        if client is not None:
            context.load_cert_chain(str(client.cert_path), str(client.key_path))
        return context


def _san(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
