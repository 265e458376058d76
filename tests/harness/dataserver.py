"""The data endpoint's server process (standard library only, so it starts fast): HTTPS, GET and HEAD of
the registry's blob files under /docker/registry/v2/blobs/, no authentication. SIGUSR1 switches it to
answering 503, SIGUSR2 back. One log line per request. `tests.harness.dataendpoint` starts and drives it.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Literal

DataMode = Literal["serve", "http_503"]
BLOBS_PREFIX = "/docker/registry/v2/blobs/"
_CHUNK = 1 << 16


class _State:
    mode: DataMode = "serve"


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "geopin-data-endpoint"
    protocol_version = "HTTP/1.1"
    root: Path
    state: _State

    def do_GET(self) -> None:
        self._answer(head_only=False)

    def do_HEAD(self) -> None:
        self._answer(head_only=True)

    def _answer(self, *, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        if self.state.mode == "http_503":
            self._error(503, "ServerBusy", head_only)
            return
        blob = self._blob_file(path)
        if blob is None:
            self._error(404, "BlobNotFound", head_only)
            return
        size = blob.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head_only:
            with blob.open("rb") as data:
                while chunk := data.read(_CHUNK):
                    self.wfile.write(chunk)
        self._log(size)

    def _blob_file(self, path: str) -> Path | None:
        if not path.startswith(BLOBS_PREFIX) or ".." in PurePosixPath(path).parts:
            return None
        candidate = self.root / path.lstrip("/")
        return candidate if candidate.is_file() else None

    def _error(self, status: int, code: str, head_only: bool) -> None:
        body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code></Error>'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)
        self._log(len(body), status)

    def _log(self, size: int, status: int = 200) -> None:
        authorization = "yes" if self.headers.get("Authorization") else "no"
        path = self.path.split("?", 1)[0]
        print(f"request {self.command} {path} {status} {size} authorization={authorization}", flush=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _log


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # The handshake runs in the request's thread on first read, so a silent client cannot block accept().
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.dataendpoint", description=__doc__)
    parser.add_argument("--listen", required=True, help="IP:PORT")
    parser.add_argument("--root", required=True, type=Path, help="the registry's filesystem rootdirectory")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    ip, _, port = args.listen.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    state = _State()
    handler = type("Handler", (_Handler,), {"root": args.root, "state": state})

    def switch(mode: DataMode) -> None:
        state.mode = mode
        print(f"mode {mode}", flush=True)

    signal.signal(signal.SIGUSR1, lambda *_: switch("http_503"))
    signal.signal(signal.SIGUSR2, lambda *_: switch("serve"))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server = _TLSServer((ip, int(port)), context)
    server.RequestHandlerClass = handler
    print(f"serving {args.root} on https://{args.listen}", flush=True)
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
