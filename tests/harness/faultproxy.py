"""A fault-injecting TCP proxy in front of one registry replica, switchable at runtime from a test.

    with FaultProxy(registries["eastus"].endpoint, ca) as proxy:
        proxy.endpoint                 # "127.0.0.1:PORT": put this in a policy instead of the replica
        proxy.set_mode("http_503")     # new connections get 503; connections of the old mode are closed
        proxy.connections["http_503"]  # connections accepted in that mode
        proxy.requests["http_503"]     # HTTP requests answered (or swallowed) in that mode

Modes:

    pass      transparent TCP pass-through: the client's TLS ends at the real registry (whose certificate
              is for 127.0.0.1 and localhost, so it is valid for the proxy's address too)
    http_503  the proxy ends TLS itself (a certificate for 127.0.0.1/localhost from the same CA) and answers
              every request `503` with a distribution error body (code UNAVAILABLE)
    http_429  likewise `429` with `Retry-After: 1` (code TOOMANYREQUESTS)
    stall     TLS handshake completes, requests are read and never answered (clients hit a read timeout);
              connections stay open
    stall_tls accept and never answer the TLS handshake (clients hit a connect timeout), like a SIGSTOPped
              registry
    drop      accept and reset (SO_LINGER 0) as soon as the client's first bytes (its ClientHello) arrive,
              or after 1s of silence: clients see a connect error (connection reset)

A mode applies to connections accepted after set_mode() returns. set_mode() also closes (by default)
every open connection accepted under a different mode, and returns only once they are closed, so a
keep-alive client's next request opens a new connection and sees the new mode. The asyncio loop runs in
a daemon thread; stop() (or leaving the `with`) closes the listener and every connection, stops the
loop, joins the thread and closes the loop.

Request counts exist only where the proxy ends TLS itself (http_503, http_429, stall): in `pass` the
stream is opaque, so only connections are counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import httpx

from tests.harness import procs
from tests.harness.streams import pipe

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from tests.harness.pki import CA

Mode = Literal["pass", "http_503", "http_429", "stall", "stall_tls", "drop"]
MODES: tuple[Mode, ...] = get_args(Mode)

_HTTP_STATUS: dict[Mode, tuple[int, str, str, str]] = {
    "http_503": (503, "Service Unavailable", "UNAVAILABLE", "service unavailable"),
    "http_429": (429, "Too Many Requests", "TOOMANYREQUESTS", "too many requests"),
}
_MAX_DISCARDED_BODY = 1 << 20
_PIPE_CHUNK = 1 << 16
_HANDSHAKE_TIMEOUT = 10.0
_CONTROL_TIMEOUT = 10.0
_DROP_AFTER = 1.0


class FaultProxyError(RuntimeError):
    pass


@dataclass(eq=False)
class _Connection:
    """One accepted client connection: the mode it was accepted in, its handler task, its streams."""

    mode: Mode
    task: asyncio.Task[None]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class FaultProxy(procs.Service):
    """A TCP proxy on 127.0.0.1 in front of `upstream` ("127.0.0.1:PORT"). See the module docstring."""

    def __init__(self, upstream: str, ca: CA, *, mode: Mode = "pass", port: int = 0) -> None:
        host, _, upstream_port = upstream.rpartition(":")
        if not host or not upstream_port.isdigit():
            raise ValueError(f"upstream must be HOST:PORT, got {upstream!r}")
        _check_mode(mode)
        self.upstream = upstream
        self._upstream_host = host
        self._upstream_port = int(upstream_port)
        self.ca = ca
        self._requested_port = port
        self.port = port
        self._mode: Mode = mode
        cert = ca.issue_server(f"faultproxy-{uuid.uuid4().hex[:8]}")
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        self._tls.set_alpn_protocols(["http/1.1"])
        self._lock = threading.Lock()
        self._connection_counts: Counter[Mode] = Counter()
        self._request_counts: Counter[Mode] = Counter()
        self._open: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- public API ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise FaultProxyError("fault proxy is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def connections(self) -> dict[Mode, int]:
        """Connections accepted so far, per mode (every mode is a key)."""
        with self._lock:
            return {mode: self._connection_counts[mode] for mode in MODES}

    @property
    def requests(self) -> dict[Mode, int]:
        """HTTP requests received so far, per mode; only the modes that end TLS themselves count any."""
        with self._lock:
            return {mode: self._request_counts[mode] for mode in MODES}

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._open)

    def reset_counts(self) -> None:
        with self._lock:
            self._connection_counts.clear()
            self._request_counts.clear()

    def set_mode(self, mode: Mode, *, close_existing: bool = True) -> None:
        """Switch mode for new connections; with `close_existing`, close (and wait for) the open
        connections accepted under any other mode first."""
        _check_mode(mode)
        if self._loop is None:
            self._mode = mode
            return
        self._call(self._switch(mode, close_existing=close_existing))

    def client(self, *, timeout: float = 10.0) -> httpx.Client:
        """An httpx client for the proxy: base URL, TLS verified against the run's CA."""
        return httpx.Client(base_url=self.url, verify=self.ca.ssl_context(), timeout=timeout)

    def close(self) -> None:
        """`stop()`, for `with`."""
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise FaultProxyError("fault proxy is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run, args=(loop,), name="faultproxy", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        thread.name = f"faultproxy-{self.port}"

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop and join its thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                self._call(self._shutdown())
        finally:
            if thread.is_alive() and not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CONTROL_TIMEOUT)
            if thread.is_alive():
                raise FaultProxyError("fault proxy thread did not stop")
            self._loop = self._thread = None
            self._server = None
            self.port = self._requested_port

    # -- loop thread ---------------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _call(self, coro: Coroutine[None, None, None]) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            raise FaultProxyError("fault proxy is not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise FaultProxyError("FaultProxy methods must not be called from its own loop thread")
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_CONTROL_TIMEOUT)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _switch(self, mode: Mode, *, close_existing: bool) -> None:
        self._mode = mode
        if close_existing:
            with self._lock:
                stale = [conn for conn in self._open if conn.mode != mode]
            await self._close_connections(stale)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with self._lock:
            everything = list(self._open)
        await self._close_connections(everything)

    @staticmethod
    async def _close_connections(connections: list[_Connection]) -> None:
        for conn in connections:
            conn.abort()
            conn.task.cancel()
        if connections:
            await asyncio.wait([conn.task for conn in connections], timeout=_CONTROL_TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(self._mode, task, [writer])
        with self._lock:
            self._open.add(conn)
            self._connection_counts[conn.mode] += 1
        try:
            await self._serve(conn, reader, writer)
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or spoke garbage: this connection is over either way
        except asyncio.CancelledError:
            pass  # set_mode() or stop() closed it; end the handler task normally (streams' callback
            # calls task.exception(), which would raise for a cancelled task)
        finally:
            conn.abort()
            with self._lock:
                self._open.discard(conn)

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = conn.mode
        if mode == "drop":
            # Reset once the client has spoken (its ClientHello), or after a moment if it stays silent.
            # Resetting before the client's first write makes CPython's ssl.wrap_socket() leak an
            # unclosed SSLSocket (it calls recv() on the reset socket and raises before closing it);
            # either way the client sees "connection reset" as a connect error.
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), timeout=_DROP_AFTER)
            return  # the finally in _handle aborts: with linger 0 the kernel sends RST
        if mode == "stall_tls":
            await _discard_until_eof(reader)
        elif mode == "pass":
            await self._pass_through(conn, reader, writer)
        else:
            await writer.start_tls(self._tls, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
            await self._answer_http(mode, reader, writer)

    async def _pass_through(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._upstream_host, self._upstream_port)
        conn.writers.append(up_writer)
        await asyncio.gather(pipe(reader, up_writer, conn.abort), pipe(up_reader, writer, conn.abort))

    async def _answer_http(self, mode: Mode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, headers = _parse_head(head)
            with self._lock:
                self._request_counts[mode] += 1
            length = int(headers.get("content-length", "0") or "0")
            keep_alive = (
                "chunked" not in headers.get("transfer-encoding", "").lower()
                and length <= _MAX_DISCARDED_BODY
                and headers.get("connection", "").lower() != "close"
            )
            if keep_alive and length:
                await reader.readexactly(length)
            if mode == "stall":
                await _discard_until_eof(reader)
                return
            writer.write(_response(mode, head_only=method == "HEAD", keep_alive=keep_alive))
            await writer.drain()
            if not keep_alive:
                return


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(_PIPE_CHUNK):
        pass


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x request line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return parts[0], headers


def _response(mode: Mode, *, head_only: bool, keep_alive: bool) -> bytes:
    status, reason, code, message = _HTTP_STATUS[mode]
    body = json.dumps(
        {"errors": [{"code": code, "message": message, "detail": "injected by geopin faultproxy"}]}
    ).encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        "Docker-Distribution-Api-Version: registry/2.0",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if status == 429:
        headers.append("Retry-After: 1")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head_only else body)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown fault proxy mode {mode!r}; one of {', '.join(MODES)}")
