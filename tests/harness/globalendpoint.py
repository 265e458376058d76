"""An emulator of ACR's global endpoint, `contoso.azurecr.io`: one name routed to one replica at a time.

ACR routes the global name with Azure Traffic Manager (DNS): a client resolves it to a healthy replica
and talks to that replica directly. The failover is health-aware but slow, "on the order of minutes".
This emulator keeps that shape at the transport level: it listens on its own address, and every new TCP
connection is passed through, bytes untouched, to the replica it currently routes to, so TLS ends at
the replica (whose certificate also names the global host) and its 307s to the data endpoint pass as
they are. It checks every replica (`GET /v2/` over TLS, healthy when the answer is below 500) every
`check_interval` seconds:

- it starts on the first replica of `order` (the home replica);
- when the current replica has been unhealthy for `failover_delay` seconds, it routes to the first
  healthy replica in `order`; until then, connections go to the dead replica and fail;
- when a replica earlier in `order` has been healthy again for `failover_delay`, it routes back.

Existing connections stay where they are, as DNS answers do. The route is written to `state_path`
(JSON: `{"route", "since", "switches", "healthy"}`) on every change, so tests and scripts can read it.
The process is `python -m tests.harness.globalrouter` (see --help); `GlobalEndpoint` starts it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness import procs
from tests.harness.controlplane import REPO_ROOT

# Re-exported: the defaults belong to the router process, callers know them from here too.
from tests.harness.globalrouter import DEFAULT_CHECK_INTERVAL as DEFAULT_CHECK_INTERVAL
from tests.harness.globalrouter import DEFAULT_FAILOVER_DELAY as DEFAULT_FAILOVER_DELAY
from tests.harness.names import HTTPS_PORT

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tests.harness.pki import CA


class GlobalEndpointError(RuntimeError):
    pass


class GlobalEndpoint(procs.Service):
    """The emulator's process. `upstreams` maps region -> "IP:PORT" in routing order (home first).

    Attributes: `host`, `ip`, `port`, `failover_delay`, `check_interval`, `order`, `state_path`, `pid`.
    `route()` is the region it sends new connections to now; `state()` the whole state file.
    """

    def __init__(
        self,
        host: str,
        ip: str,
        upstreams: Mapping[str, str],
        ca: CA,
        *,
        workdir: Path,
        log_dir: Path | None = None,
        port: int = HTTPS_PORT,
        failover_delay: float = DEFAULT_FAILOVER_DELAY,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        detach: bool = False,
    ) -> None:
        if not upstreams:
            raise ValueError("the global endpoint needs at least one replica")
        self.host = host
        self.ip = ip
        self.port = port
        self.upstreams = dict(upstreams)
        self.order = list(upstreams)
        self.ca = ca
        self.failover_delay = failover_delay
        self.check_interval = check_interval
        self.workdir = workdir
        self.log_dir = log_dir or workdir
        self.detach = detach
        self.state_path = workdir / "global-endpoint.json"
        self.process: procs.Process | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise GlobalEndpointError("the global endpoint was never started")
        return self.process.pid

    @property
    def endpoint(self) -> str:
        return self.host if self.port == HTTPS_PORT else f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "global-endpoint.log"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.harness.globalrouter",
            f"--listen={self.ip}:{self.port}",
            f"--ca={self.ca.cert_path}",
            f"--state={self.state_path}",
            f"--failover-delay={self.failover_delay:g}",
            f"--check-interval={self.check_interval:g}",
            *(f"--upstream={region}={address}" for region, address in self.upstreams.items()),
        ]

    def start(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.alive():
            raise GlobalEndpointError("the global endpoint is already running")
        self.state_path.unlink(missing_ok=True)
        self.process = procs.spawn("global-endpoint", self.argv(), self.log_path, detach=self.detach, cwd=REPO_ROOT)
        procs.wait_serving(
            self.process, self.state_path.exists, timeout=timeout, what="the global endpoint", error=GlobalEndpointError
        )

    def close(self) -> None:
        if self.process is not None:
            procs.terminate([self.process], timeout=5.0)

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.state_path.read_text())
        return loaded

    def route(self) -> str:
        """The region new connections go to now."""
        return str(self.state()["route"])
