"""A tiny, real Docker registry token server (distribution "token authentication" spec) for tests.

    GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...]   (HTTPS, optional basic auth)
    → 200 {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": ISO8601}

Tokens are ES256 JWTs with the signing certificate in the `x5c` header; the certificate is issued by the
run's CA, so a `docker-registry` configured with `registry_auth_config()` (its `rootcertbundle` is the
CA certificate) verifies them. Every request is recorded in `requests` (thread-safe), so tests can
count token fetches. With `users`, a request must carry matching basic credentials (else 401);
without, anonymous requests get every action they ask for.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import procs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tests.harness.pki import CA


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    account: str | None  # the basic-auth user, None when anonymous
    service: str | None
    scopes: tuple[str, ...]
    status: int


class TokenServer(procs.Service):
    """Attributes: `realm` (URL), `service`, `issuer`, `requests`, `issued` (token strings)."""

    def __init__(
        self,
        ca: CA,
        *,
        service: str = "geopin-test-registry",
        issuer: str = "geopin-test-token-issuer",
        users: Mapping[str, str] | None = None,
        expires_in: int = 300,
        name: str = "token-server",
    ) -> None:
        self.ca = ca
        self.service = service
        self.issuer = issuer
        self.users = dict(users or {})
        self.expires_in = expires_in
        self._signer = ca.issue(f"{name}-signer", common_name=f"{name} signer")
        self._signing_key = serialization.load_pem_private_key(self._signer.key_pem, password=None)
        signer_der = x509.load_pem_x509_certificate(self._signer.cert_pem).public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(signer_der).decode()]
        serving = ca.issue_server(name)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(serving.cert_path), str(serving.key_path))
        self._lock = threading.Lock()
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def registry_auth_config(self) -> dict[str, Any]:
        """The `auth:` section of a docker-registry config that trusts this server's tokens."""
        if not self.port:
            raise RuntimeError("start the token server before asking for its realm")
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.ca.cert_path),
            }
        }

    def hits(self, *, status: int | None = 200) -> int:
        """How many requests were answered (with `status`, or any when None)."""
        with self._lock:
            return sum(1 for r in self.requests if status is None or r.status == status)

    # -- tokens --------------------------------------------------------------------------------

    def issue(self, account: str | None, scopes: tuple[str, ...]) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        token = jwt.encode(claims, self._signing_key, algorithm="ES256", headers={"x5c": self._x5c})  # type: ignore[arg-type]
        with self._lock:
            self.issued.append(token)
        return token

    def _handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query)
        services = query.get("service")
        service = services[0] if services else None
        scopes = tuple(query.get("scope") or [])
        account: str | None = None
        header = handler.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if self.users.get(user) != password or user not in self.users:
                return self._record(user, service, scopes, 401, {"details": "invalid credentials"})
            account = user
        if url.path != "/token":
            return self._record(account, service, scopes, 404, {"details": "not found"})
        if self.users and account is None:
            return self._record(account, service, scopes, 401, {"details": "authentication required"})
        if service != self.service:
            return self._record(account, service, scopes, 400, {"details": f"unknown service {service!r}"})
        token = self.issue(account, scopes)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        return self._record(account, service, scopes, 200, body)

    def _record(
        self, account: str | None, service: str | None, scopes: tuple[str, ...], status: int, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(TokenRequest(account=account, service=service, scopes=scopes, status=status))
        return status, body

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, body = owner._handle(self)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="geopin-token-server"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = self._ssl.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
