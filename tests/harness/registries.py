"""Registry replicas: one Debian `docker-registry` (CNCF distribution 2.8) process per region.

Each serves TLS from the per-run CA on 127.0.0.1 and a random port, stores blobs on the filesystem,
and can require basic auth (htpasswd, bcrypt). Faults are real signals: pause() is SIGSTOP (requests
hang), stop() is SIGKILL (connections refused), resume() and restart() undo them.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import httpx
import yaml

from tests.harness import procs
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from tests.harness.pki import CA

DEFAULT_REGIONS = ("eastus", "westus", "centralus")
REGISTRY_BINARY = "docker-registry"

State = Literal["running", "paused", "stopped"]


class RegistryError(RuntimeError):
    pass


def htpasswd_line(user: str, password: str) -> str:
    """`user:$2y$...` from apache2-utils' `htpasswd -Bbn` (distribution accepts bcrypt only)."""
    result = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, stdout=subprocess.PIPE, text=True)
    return result.stdout.strip()


class Registry:
    """One docker-registry process. Attributes: `name`, `endpoint` ("127.0.0.1:PORT"), `url`,
    `auth` ((user, password) or None), `ca`, `pid`, `state`."""

    def __init__(
        self,
        name: str,
        ca: CA,
        *,
        auth: tuple[str, str] | None = None,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        port: int | None = None,
        detach: bool = False,
        ready_timeout: float = 20.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        # Top-level config sections merged over the defaults (e.g. {"auth": {"token": {...}}}).
        self.extra_config = dict(extra_config or {})
        self.ca = ca
        self.auth = auth
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.port = port or procs.free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"https://{self.endpoint}"
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"geopin-registry-{name}-")) if workdir is None else workdir
        self.log_dir = log_dir or self.workdir
        self.process: procs.Process | None = None
        self._paused = False
        self.config_path = self._write_config()

    # -- configuration -------------------------------------------------------------------------

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        serving = self.ca.issue_server(f"registry-{self.name}")
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "registry", "region": self.name}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.endpoint,
                "secret": secrets.token_hex(16),
                "tls": {"certificate": str(serving.cert_path), "key": str(serving.key_path)},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(*self.auth) + "\n")
            config["auth"] = {"htpasswd": {"realm": f"geopin-{self.name}", "path": str(htpasswd)}}
        config.update(self.extra_config)
        path = self.workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RegistryError(f"registry {self.name} was never started")
        return self.process.pid

    @property
    def state(self) -> State:
        if self.process is None or not self.process.alive():
            return "stopped"
        return "paused" if self._paused else "running"

    def start(self, *, wait: bool = True) -> None:
        if self.state != "stopped":
            raise RegistryError(f"registry {self.name} is already {self.state}")
        self._paused = False
        self.process = procs.spawn(
            f"registry-{self.name}",
            [REGISTRY_BINARY, "serve", str(self.config_path)],
            self.log_dir / f"registry-{self.name}.log",
            detach=self.detach,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll GET /v2/ until it answers 200 (or 401 with auth on)."""

        def ready() -> bool:
            if self.process is None or not self.process.alive():
                tail = self.process.log_tail() if self.process else ""
                raise RegistryError(f"registry {self.name} exited; last log lines:\n{tail}")
            try:
                with self.client(timeout=1.0, authenticated=False) as http:
                    return http.get("/v2/").status_code in (200, 401)
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout or self.ready_timeout, interval=0.05, what=f"registry {self.name}")

    def stop(self) -> None:
        """SIGKILL: the port stops listening, clients get connection refused."""
        if self.process is not None and self.process.alive():
            self.process.popen.kill()
            self.process.popen.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers, clients time out."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Kill (if running or paused) and start again on the same port with the same storage."""
        self.stop()
        self.start()

    def heal(self) -> None:
        """Whatever state a test left it in, make it serve again."""
        if self.state == "paused":
            self.resume()
        if self.state == "stopped":
            self.start()

    def close(self) -> None:
        """Stop for good (SIGTERM, then SIGKILL at the deadline) and remove a temp workdir."""
        try:
            if self.process is not None:
                procs.terminate([self.process], timeout=5.0)
            self._paused = False
        finally:
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self._owns_workdir = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or not self.process.alive():
            raise RegistryError(f"registry {self.name} is not running")
        self.process.popen.send_signal(sig)

    # -- clients -------------------------------------------------------------------------------

    def client(self, *, timeout: float = 10.0, authenticated: bool = True) -> httpx.Client:
        """An httpx client for this registry: base URL, TLS verified against the run's CA, basic auth."""
        auth = httpx.BasicAuth(*self.auth) if authenticated and self.auth is not None else None
        return httpx.Client(base_url=self.url, verify=self.ca.ssl_context(), timeout=timeout, auth=auth)


class RegistrySet(Mapping[str, Registry]):
    """One Registry per region, started together; `registries["eastus"].endpoint` etc."""

    def __init__(
        self,
        ca: CA,
        regions: Sequence[str] = DEFAULT_REGIONS,
        *,
        auth: tuple[str, str] | None = None,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        detach: bool = False,
    ) -> None:
        self.ca = ca
        self._registries: dict[str, Registry] = {}
        for region in regions:
            self._registries[region] = Registry(
                region,
                ca,
                auth=auth,
                workdir=None if workdir is None else workdir / region,
                log_dir=log_dir,
                detach=detach,
            )

    def __getitem__(self, region: str) -> Registry:
        return self._registries[region]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registries)

    def __len__(self) -> int:
        return len(self._registries)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        began = time.monotonic()
        try:
            for registry in self.values():
                registry.start(wait=False)
            for registry in self.values():
                registry.wait_ready()
        except BaseException:
            self.close()
            raise
        print(f"{len(self)} registries ready in {time.monotonic() - began:.1f}s", file=sys.stderr)

    def heal(self) -> None:
        for registry in self.values():
            registry.heal()

    def close(self) -> None:
        """Close every registry, even if closing one fails (the first error is re-raised at the end)."""
        errors: list[Exception] = []
        for registry in self.values():
            try:
                registry.close()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]
