"""The write fence at the socket (io/fencing.py), against a real HTTP server on loopback.

The case it exists for: the replica held the Lease when its write was prepared and lost it before the
write left (a SIGSTOP between the two). The early check passes; the fence must still hold it back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest
import urllib3

from geopin.io.fencing import NotLeading, fence_writes
from geopin.io.kube import Kube


class Recorder(BaseHTTPRequestHandler):
    received: list[str]

    def _answer(self) -> None:
        self.received.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_PATCH = do_PUT = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    received: list[str] = []
    handler = type("Handler", (Recorder,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_fence_holds_back_writes_and_lets_reads_through(server: tuple[str, list[str]]) -> None:
    url, received = server
    manager = urllib3.PoolManager()
    holds = True
    fence_writes(manager, lambda: holds)
    assert manager.request("PATCH", f"{url}/a", body=b"[]").status == 200
    holds = False
    with pytest.raises(NotLeading, match="PATCH /a: not sent"):
        manager.request("PATCH", f"{url}/a?fieldManager=geopin", body=b"[]")
    assert manager.request("GET", f"{url}/a").status == 200
    assert received == ["PATCH", "GET"]


def test_a_write_that_loses_the_lease_after_the_early_check_is_never_sent(server: tuple[str, list[str]]) -> None:
    url, received = server
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    answers = iter([True, False])  # the early check passes; the Lease is gone by the time the write would leave
    kube = Kube(kubernetes.client.ApiClient(configuration), may_write=lambda: next(answers))
    try:
        with pytest.raises(NotLeading):
            asyncio.run(kube.patch_policy_status("contoso", {"observedGeneration": 1}))
    finally:
        kube.close()
    assert received == []
