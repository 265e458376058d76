"""A local stand-in for the App Service managed-identity endpoint that azure-identity's real code path calls.

``DefaultAzureCredential`` → ``ManagedIdentityCredential`` picks the App Service protocol when both
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set (and ``IDENTITY_SERVER_THUMBPRINT`` is not). Its request,
as azure-identity 1.27 builds it (azure/identity/_credentials/app_service.py, used by the aio credential)::

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<scope without "/.default">
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

and the answer it parses (azure/identity/_internal/managed_identity_client.py ``_process_response``)::

    200 {"access_token": "...", "expires_on": "<epoch seconds>", "resource": "...", "token_type": "Bearer"}

``access_token`` and ``expires_on`` (or ``expires_in``) are required, ``resource`` keys the token cache.
Errors: 400 for a missing ``api-version``/``resource``, 401 for a missing or wrong ``X-IDENTITY-HEADER``.

Plain HTTP on 127.0.0.1 (as App Service's own endpoint is), served from a thread. Every request that
reaches the handler is recorded in ``requests``; ``env`` is the environment a child process needs.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from types import TracebackType

API_VERSION = "2019-08-01"
PATH = "/msi/token"


@dataclass(frozen=True)
class MsiRequest:
    """One request the managed-identity endpoint saw."""

    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    header_ok: bool = False
    status: int = 0

    @property
    def resource(self) -> str | None:
        values = self.query.get("resource")
        return values[0] if values else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], msi: MsiServer) -> None:
        self.msi = msi
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        msi = self.server.msi
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        header_ok = self.headers.get("X-IDENTITY-HEADER") == msi.secret
        status, body = self._answer(parsed.path, query, header_ok)
        msi._record(MsiRequest("GET", parsed.path, query, header_ok, status))
        self._send(status, body)

    def _answer(self, path: str, query: dict[str, list[str]], header_ok: bool) -> tuple[int, dict[str, Any]]:
        msi = self.server.msi
        if not header_ok:
            return 401, {"error": {"code": "Unauthorized", "message": "X-IDENTITY-HEADER is missing or wrong"}}
        if path != PATH:
            return 404, {"error": {"code": "NotFound", "message": f"no such path {path}"}}
        if query.get("api-version") != [API_VERSION] or not query.get("resource"):
            return 400, {"error": {"code": "BadRequest", "message": "api-version and resource are required"}}
        return 200, {
            "access_token": msi.token,
            "expires_on": str(int(time.time()) + msi.expires_in),  # App Service sends epoch seconds as a string
            "resource": query["resource"][0],
            "token_type": "Bearer",
            "client_id": "00000000-0000-0000-0000-000000000001",
        }

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class MsiServer:
    """The fake managed-identity endpoint; use as a context manager. ``endpoint`` is its full token URL."""

    def __init__(self, token: str, *, secret: str = "test-identity-header", expires_in: int = 3600) -> None:
        self.token = token
        self.secret = secret
        self.expires_in = expires_in
        self.requests: list[MsiRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MsiServer is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs for azure-identity to pick the App Service managed identity (this server)."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"msiserver:{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _record(self, request: MsiRequest) -> None:
        with self._lock:
            self.requests.append(request)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def snapshot(self) -> list[MsiRequest]:
        with self._lock:
            return list(self.requests)
