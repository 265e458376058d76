"""A replica's data endpoint, `contoso.<region>.data.azurecr.io`: where its blob downloads are redirected.

ACR answers a blob GET with `307 Temporary Redirect` to a pre-signed URL on the data endpoint, which
serves the bytes without the registry's Authorization. Here docker-registry's `redirect` storage
middleware sends `https://<data host>/docker/registry/v2/blobs/sha256/ab/<digest>/data` (the storage
path of the blob), and this server answers it from the registry's filesystem storage over TLS, with no
authentication, GET and HEAD only, nothing outside the blobs directory.

It runs as its own process (`python -m tests.harness.dataserver`), so faults are real: `stop()` is
SIGKILL (connections refused), `pause()` SIGSTOP (hangs), and `set_mode("http_503")` (SIGUSR1) answers
every request 503 while the process runs; `set_mode("serve")` (SIGUSR2) undoes it. Each request is one
line in the log: `request GET /docker/... 200 1234 authorization=no`.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.harness import procs
from tests.harness.controlplane import REPO_ROOT
from tests.harness.dataserver import DataMode
from tests.harness.names import HTTPS_PORT, resolving_transport
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from tests.harness.pki import CA

_MODE_SIGNALS: dict[DataMode, signal.Signals] = {"http_503": signal.SIGUSR1, "serve": signal.SIGUSR2}


class DataEndpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class DataRequest:
    """One request the data endpoint answered, from its log."""

    method: str
    path: str
    status: int
    authorization: bool


class DataEndpoint(procs.Faultable):
    """One data-endpoint process. Attributes: `host` (the data host name), `ip`, `url`, `root` (the
    registry's storage root directory), `mode`, `pid`, `state` ("running", "paused", "stopped").
    Faults: `stop()`, `pause()`, `resume()`, `restart()`, `heal()` (procs.Faultable) and `set_mode()`."""

    def __init__(
        self,
        host: str,
        ip: str,
        root: Path,
        ca: CA,
        *,
        workdir: Path,
        log_dir: Path | None = None,
        port: int = HTTPS_PORT,
        detach: bool = False,
    ) -> None:
        self.host = host
        self.label = f"data endpoint {host}"
        self.error = DataEndpointError
        self.ip = ip
        self.port = port
        self.root = root
        self.ca = ca
        self.workdir = workdir
        self.log_dir = log_dir or workdir
        self.detach = detach
        self.url = f"https://{host}" if port == HTTPS_PORT else f"https://{host}:{port}"
        self.mode: DataMode = "serve"
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert = ca.issue_server(f"data-{host}", (host, ip))

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"data-{self.host}.log"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.harness.dataserver",
            f"--listen={self.ip}:{self.port}",
            f"--root={self.root}",
            f"--cert={self.cert.cert_path}",
            f"--key={self.cert.key_path}",
        ]

    def start(self, *, wait: bool = True) -> None:
        if self.state != "stopped":
            raise DataEndpointError(f"data endpoint {self.host} is already {self.state}")
        self._paused = False
        self.mode = "serve"
        self.process = procs.spawn(f"data-{self.host}", self.argv(), self.log_path, detach=self.detach, cwd=REPO_ROOT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def answers() -> bool:
            with self.client(timeout=1.0) as http:
                return http.get("/").status_code == 404

        procs.wait_serving(
            self.process, answers, timeout=timeout, what=f"data endpoint {self.host}", error=DataEndpointError
        )

    def set_mode(self, mode: DataMode) -> None:
        """`http_503`: every request answers 503 (the process keeps listening); `serve`: back to normal.
        Returns once a request shows the new mode."""
        self.send_signal(_MODE_SIGNALS[mode])
        self.mode = mode
        expected = 503 if mode == "http_503" else 404

        def switched() -> bool:
            with self.client(timeout=1.0) as http:
                return http.get("/").status_code == expected

        wait_until(switched, timeout=10.0, interval=0.02, what=f"data endpoint {self.host} in mode {mode}")

    def heal(self) -> None:
        super().heal()
        if self.mode != "serve":
            self.set_mode("serve")

    def close(self) -> None:
        if self.process is not None:
            procs.terminate([self.process], timeout=5.0)
        self._paused = False

    def client(self, *, timeout: float = 10.0) -> httpx.Client:
        """An httpx client for this host (resolved to `ip` by the client itself), TLS verified by name."""
        verify = self.ca.ssl_context()
        transport = resolving_transport({self.host: self.ip}, verify)
        return httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def requests(self) -> list[DataRequest]:
        """Every request logged so far, oldest first."""
        seen: list[DataRequest] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return seen
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 6 and parts[0] == "request" and parts[3].isdigit():
                seen.append(DataRequest(parts[1], parts[2], int(parts[3]), parts[5] == "authorization=yes"))
        return seen
