"""A local HTTPS stand-in for the one Azure Resource Manager call geopin makes (ARM is unreachable here).

It answers exactly the documented shape of "Replications - List" (api-version 2025-11-01)::

    GET /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/{name}
        /replications?api-version=...
    -> 200 {"value": [{"id", "name", "type", "location",
                       "properties": {"provisioningState", "status": {"displayStatus", "message", "timestamp"},
                                      "regionEndpointEnabled", "zoneRedundancy"}}],
            "nextLink": "https://.../replications?api-version=...&$skipToken=N"}   (absent on the last page)

with ARM's error envelope ``{"error": {"code", "message"}}`` for 400 (no api-version), 401 (no or wrong
``Authorization: Bearer <token>``), 404 (another subscription, group or registry) and the injected 500.

Knobs: ``replicas`` (settable list), ``page_size`` (default: two pages), ``mode`` (``Mode.OK``,
``Mode.ERROR`` → 500, ``Mode.STALL`` → read the request, never answer until healed or closed),
``stop()``/``start()`` (closed port → connection refused; ``start`` rebinds the same port),
``request_count`` and ``requests`` (path + query of every request that reached a handler).
TLS comes from the run's test CA; the handshake happens in the connection's own thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import math
import os
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from types import TracebackType

    from tests.harness.pki import CA

PROVIDER = "Microsoft.ContainerRegistry"
REPLICATION_TYPE = "Microsoft.ContainerRegistry/registries/replications"


class Mode(enum.Enum):
    OK = "ok"
    ERROR = "error"  # 500 InternalServerError with ARM's error envelope
    STALL = "stall"  # accept and read the request, then never answer


@dataclass
class ArmReplica:
    """One replication as ARM stores it; ``region_endpoint_enabled=None`` leaves the property out."""

    location: str
    provisioning_state: str = "Succeeded"
    display_status: str = "Ready"
    message: str = ""
    region_endpoint_enabled: bool | None = True
    zone_redundancy: str = "Disabled"

    @property
    def name(self) -> str:
        return "".join(self.location.split()).lower()


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    authorized: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], arm: ArmServer) -> None:
        self.arm = arm
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake here, in the connection's thread, so a slow client never blocks accept().
        try:
            tls = self.arm.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.arm._connections.add(tls)
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass  # the peer went away, or stop() cut the connection
        finally:
            self.arm._connections.discard(tls)
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        arm = self.server.arm
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        authorized = self.headers.get("Authorization", "") == f"Bearer {arm.token}"
        arm._record(RequestRecord("GET", parsed.path, query, authorized))

        mode = arm.mode
        if mode is Mode.STALL:
            arm._stall_wait()
            self.close_connection = True
            return
        if not authorized:
            problem = "is invalid" if self.headers.get("Authorization") else "is missing"
            self._error(401, "AuthenticationFailed", f"Authentication failed. The 'Authorization' header {problem}.")
            return
        if "api-version" not in query:
            self._error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
            return
        if parsed.path.lower() != arm.list_path.lower():
            self._error(404, "ResourceNotFound", f"The Resource '{parsed.path}' was not found.")
            return
        if mode is Mode.ERROR:
            self._error(500, "InternalServerError", "Encountered internal server error. Diagnostic information ...")
            return
        self._send(200, arm.page(query, api_version=query["api-version"][0]))

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000000")
        self.end_headers()
        self.wfile.write(data)


class ArmServer:
    """The fake ARM endpoint; use as a context manager (``url`` is ``https://127.0.0.1:PORT``)."""

    def __init__(
        self,
        ca: CA,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "platform-rg",
        registry_name: str = "contoso",
        token: str = "test-arm-token",
        replicas: list[ArmReplica] | None = None,
    ) -> None:
        pair = ca.issue_server("armserver")
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(str(pair.cert_path), str(pair.key_path))
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.registry_name = registry_name
        self.token = token
        self.replicas: list[ArmReplica] = list(replicas or [])
        self.page_size: int | None = None
        self.mode = Mode.OK
        self.port = 0
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stall_release = threading.Event()
        self._stalled_count = 0
        self._connections: set[ssl.SSLSocket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the same port, so a client keeps its base URL across stop()/start()."""
        if self._server is not None:
            return
        self._stall_release.clear()
        server = _Server(("127.0.0.1", self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"armserver:{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Die like a process would: close the listening socket (new connections are refused until
        start()) and cut every open keep-alive connection, stalled ones included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                # the plain socket's shutdown: SSLSocket.shutdown would drop its SSL object under the reader
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
        self._stall_release.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def close(self) -> None:
        self.stop()

    def heal(self) -> None:
        """Answer normally again and release any stalled request."""
        self.mode = Mode.OK
        self._stall_release.set()

    def stall(self) -> None:
        self._stall_release.clear()
        self.mode = Mode.STALL

    # -- observation -----------------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def stalled_count(self) -> int:
        """Requests currently held by Mode.STALL."""
        with self._lock:
            return self._stalled_count

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _stall_wait(self) -> None:
        with self._lock:
            self._stalled_count += 1
        try:
            self._stall_release.wait()
        finally:
            with self._lock:
                self._stalled_count -= 1

    # -- the ARM shape ---------------------------------------------------------------------------

    @property
    def list_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/registries/{self.registry_name}/replications"
        )

    def page(self, query: dict[str, list[str]], *, api_version: str) -> dict[str, Any]:
        replicas = list(self.replicas)
        size = self.page_size or max(1, math.ceil(len(replicas) / 2))
        start = int(query.get("$skipToken", ["0"])[0])
        chunk = replicas[start : start + size]
        body: dict[str, Any] = {"value": [self.resource(r) for r in chunk]}
        if start + size < len(replicas):
            next_query = urllib.parse.urlencode({"api-version": api_version, "$skipToken": str(start + size)})
            body["nextLink"] = f"{self.url}{self.list_path}?{next_query}"
        return body

    def resource(self, replica: ArmReplica) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "provisioningState": replica.provisioning_state,
            "status": {
                "displayStatus": replica.display_status,
                "message": replica.message,
                "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
            "zoneRedundancy": replica.zone_redundancy,
        }
        if replica.region_endpoint_enabled is not None:
            properties["regionEndpointEnabled"] = replica.region_endpoint_enabled
        return {
            "id": f"{self.list_path}/{replica.name}",
            "name": replica.name,
            "type": REPLICATION_TYPE,
            "location": replica.location,
            "tags": {},
            "properties": properties,
        }


SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def trust_bundle(ca: CA, directory: Path) -> Path:
    """The system roots (whatever SSL_CERT_FILE named) plus the test CA: a geopin process's SSL_CERT_FILE,
    so that azure-core's transport (default context) trusts this fake ARM."""
    system = Path(os.environ.get("SSL_CERT_FILE") or SYSTEM_BUNDLE)
    roots = system.read_bytes() if system.is_file() else b""
    bundle = directory / "trust-bundle.pem"
    bundle.write_bytes(roots.rstrip(b"\n") + b"\n" + ca.cert_pem)
    return bundle
