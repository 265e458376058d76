"""The fault proxy in front of a real registry replica: every mode, runtime switches, clean shutdown."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.harness.faultproxy import MODES, FaultProxy
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.faultproxy import Mode
    from tests.harness.pki import CA
    from tests.harness.registries import RegistrySet

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 1.0


def proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("faultproxy")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def proxy(registries: RegistrySet, ca: CA) -> Iterator[FaultProxy]:
    with FaultProxy(registries["eastus"].endpoint, ca) as fault_proxy:
        yield fault_proxy
    assert fault_proxy.open_connections == 0
    assert not proxy_threads()


def get_v2(proxy: FaultProxy, ca: CA, timeout: float = CLIENT_TIMEOUT) -> httpx.Response:
    with httpx.Client(verify=ca.ssl_context(), timeout=timeout) as http:
        return http.get(f"https://{proxy.endpoint}/v2/")


def test_pass_reaches_the_registry(proxy: FaultProxy, ca: CA) -> None:
    assert proxy.mode == "pass"
    assert proxy.endpoint.startswith("127.0.0.1:")
    response = get_v2(proxy, ca)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert proxy.connections["pass"] == 1
    assert set(proxy.connections) == set(MODES)


@pytest.mark.parametrize(
    ("mode", "status", "code"), [("http_503", 503, "UNAVAILABLE"), ("http_429", 429, "TOOMANYREQUESTS")]
)
def test_http_status_modes(proxy: FaultProxy, ca: CA, mode: Mode, status: int, code: str) -> None:
    proxy.set_mode(mode)
    response = get_v2(proxy, ca)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["errors"][0]["code"] == code
    if status == 429:
        assert response.headers["Retry-After"] == "1"
    else:
        assert "Retry-After" not in response.headers
    head = httpx.head(f"{proxy.url}/v2/", verify=ca.ssl_context(), timeout=CLIENT_TIMEOUT)
    assert head.status_code == status
    assert head.content == b""
    assert proxy.connections[mode] == 2
    assert proxy.requests[mode] == 2


def test_stall_times_out_on_read(proxy: FaultProxy, ca: CA) -> None:
    proxy.set_mode("stall")
    began = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        get_v2(proxy, ca)
    assert time.monotonic() - began < CLIENT_TIMEOUT + 2.0
    assert proxy.requests["stall"] == 1
    # The client gave up and closed; the proxy notices and forgets the connection.
    wait_until(lambda: proxy.open_connections == 0, timeout=5.0, interval=0.02, what="stalled connection closed")


def test_stall_tls_times_out_on_connect(proxy: FaultProxy, ca: CA) -> None:
    proxy.set_mode("stall_tls")
    began = time.monotonic()
    with pytest.raises(httpx.ConnectTimeout):
        get_v2(proxy, ca)
    assert time.monotonic() - began < CLIENT_TIMEOUT + 2.0
    assert proxy.connections["stall_tls"] == 1


def test_stall_keeps_connections_open(proxy: FaultProxy, ca: CA) -> None:
    proxy.set_mode("stall")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0):
        wait_until(lambda: proxy.open_connections == 1, timeout=5.0, interval=0.02, what="stalled connection")
        proxy.set_mode("pass")  # closes the stalled connection
        assert proxy.open_connections == 0


def test_drop_fails_the_connection(proxy: FaultProxy, ca: CA) -> None:
    proxy.set_mode("drop")
    for _ in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ConnectError)):
            get_v2(proxy, ca)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as raw:
        raw.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            raw.recv(1)
    assert proxy.connections["drop"] == 4
    assert proxy.open_connections == 0


def test_switching_back_to_pass(proxy: FaultProxy, ca: CA) -> None:
    proxy.set_mode("http_503")
    assert get_v2(proxy, ca).status_code == 503
    proxy.set_mode("drop")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ConnectError)):
        get_v2(proxy, ca)
    proxy.set_mode("pass")
    assert get_v2(proxy, ca).status_code == 200
    assert proxy.connections == {"pass": 1, "http_503": 1, "http_429": 0, "stall": 0, "stall_tls": 0, "drop": 1}


def test_keep_alive_client_sees_the_switch(proxy: FaultProxy, ca: CA) -> None:
    with proxy.client(timeout=CLIENT_TIMEOUT) as http:
        assert http.get("/v2/").status_code == 200
        assert http.get("/v2/").status_code == 200
        assert proxy.connections["pass"] == 1  # one pooled connection, reused
        assert proxy.open_connections == 1

        proxy.set_mode("http_503")
        assert proxy.open_connections == 0  # the pass-through connection was closed
        assert http.get("/v2/").status_code == 503
        assert http.get("/v2/").status_code == 503
        assert proxy.connections["http_503"] == 1
        assert proxy.requests["http_503"] == 2

        proxy.set_mode("http_429")
        assert http.get("/v2/").status_code == 429

        proxy.set_mode("pass")
        assert http.get("/v2/").status_code == 200
        assert proxy.connections["pass"] == 2


def test_keep_alive_switches_repeatedly(proxy: FaultProxy, ca: CA) -> None:
    with proxy.client(timeout=CLIENT_TIMEOUT) as http:
        for _ in range(20):
            proxy.set_mode("pass")
            assert http.get("/v2/").status_code == 200
            proxy.set_mode("http_503")
            assert http.get("/v2/").status_code == 503


def test_stop_closes_everything(registries: RegistrySet, ca: CA) -> None:
    fds_before = open_fds()
    proxy = FaultProxy(registries["eastus"].endpoint, ca)
    with pytest.raises(RuntimeError, match="not started"):
        _ = proxy.endpoint
    proxy.start()
    port = proxy.port
    assert [thread.name for thread in proxy_threads()] == [f"faultproxy-{port}"]
    with proxy.client(timeout=CLIENT_TIMEOUT) as http:
        assert http.get("/v2/").status_code == 200
        proxy.set_mode("stall", close_existing=False)
        with socket.create_connection(("127.0.0.1", port), timeout=5.0):
            wait_until(lambda: proxy.open_connections == 2, timeout=5.0, interval=0.02, what="two open connections")
            proxy.stop()
            assert proxy.open_connections == 0
            assert not proxy_threads()
            with pytest.raises(httpx.TransportError):
                http.get("/v2/")
    proxy.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5.0).close()
    assert open_fds() <= fds_before


def test_unknown_mode_is_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown fault proxy mode"):
        proxy.set_mode("teapot")  # type: ignore[arg-type]
    assert proxy.mode == "pass"
