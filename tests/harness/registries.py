"""Registry replicas: one Debian `docker-registry` (CNCF distribution 2.8) process per region.

Each serves TLS from the per-run CA on 127.0.0.1 and a random port, stores blobs on the filesystem,
and can require basic auth (htpasswd, bcrypt). Faults are real signals: pause() is SIGSTOP (requests
hang), stop() is SIGKILL (connections refused), resume() and restart() undo them.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import yaml

from tests.harness import procs
from tests.harness.names import HTTPS_PORT, resolving_transport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.harness.pki import CA

DEFAULT_REGIONS = ("eastus", "westus", "centralus")
REGISTRY_BINARY = "docker-registry"

State = procs.State


class RegistryError(RuntimeError):
    pass


def htpasswd_line(user: str, password: str) -> str:
    """`user:$2y$04$...` from apache2-utils' `htpasswd -Bbn` (distribution accepts bcrypt only). The
    lowest cost, 4: the registry checks the password on every request, and the soak's probes, pulls and
    replication make thousands."""
    result = subprocess.run(
        ["htpasswd", "-Bbn", "-C", "4", user, password], check=True, stdout=subprocess.PIPE, text=True
    )
    return result.stdout.strip()


class Registry(procs.Faultable):
    """One docker-registry process. Attributes: `name`, `endpoint` ("127.0.0.1:PORT", or the ACR-shaped
    `host` alone on port 443), `url`, `host`, `ip`, `port`, `address` ("IP:PORT", reachable without
    names), `auth` ((user, password) or None), `ca`, `pid`, `state`.

    `ip`, `host`, `tls_hosts` (extra names in the certificate), `redirect_url` (the data endpoint blob
    downloads are redirected to) and `resolve` ({name: ip} for `client()`) serve the ACR-shaped set.
    """

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
        ip: str = "127.0.0.1",
        host: str | None = None,
        tls_hosts: Sequence[str] = (),
        redirect_url: str | None = None,
        resolve: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.label = f"registry {name}"
        self.error = RegistryError
        # Top-level config sections merged over the defaults (e.g. {"auth": {"token": {...}}}).
        self.extra_config = dict(extra_config or {})
        self.ca = ca
        self.auth = auth
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.ip = ip
        self.port = port or procs.free_port()
        # The name clients use (an ACR-shaped host) or the listen address; port 443 goes unwritten.
        self.host = host or ip
        self.endpoint = self.host if self.port == HTTPS_PORT else f"{self.host}:{self.port}"
        self.address = f"{ip}:{self.port}"
        self.url = f"https://{self.endpoint}"
        self.tls_hosts = (*dict.fromkeys((self.host, *tls_hosts, ip)),)
        self.redirect_url = redirect_url
        # {name: ip} for the harness's own clients, which run outside the namespace where names resolve.
        self.resolve = {self.host: ip, **(resolve or {})} if host else dict(resolve or {})
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"geopin-registry-{name}-")) if workdir is None else workdir
        self.log_dir = log_dir or self.workdir
        self.process: procs.Process | None = None
        self._paused = False
        self.config_path = self._write_config()

    # -- configuration -------------------------------------------------------------------------

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.host == "127.0.0.1":
            serving = self.ca.issue_server(f"registry-{self.name}")
        else:
            serving = self.ca.issue_server(f"registry-{self.name}", self.tls_hosts)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "registry", "region": self.name}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.address,
                "secret": secrets.token_hex(16),
                "tls": {"certificate": str(serving.cert_path), "key": str(serving.key_path)},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(*self.auth) + "\n")
            config["auth"] = {"htpasswd": {"realm": f"geopin-{self.name}", "path": str(htpasswd)}}
        if self.redirect_url is not None:
            # Blob GETs and HEADs answer 307 to <redirect_url>/<storage path>, as ACR sends downloads to
            # its data endpoint (distribution 2.8 keeps only the scheme and host of baseurl).
            config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.redirect_url}}]}
        config.update(self.extra_config)
        path = self.workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    # -- lifecycle -----------------------------------------------------------------------------

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

        def answers() -> bool:
            with self.client(timeout=1.0, authenticated=False) as http:
                return http.get("/v2/").status_code in (200, 401)

        procs.wait_serving(
            self.process,
            answers,
            timeout=timeout or self.ready_timeout,
            what=f"registry {self.name}",
            error=RegistryError,
        )

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

    # -- clients -------------------------------------------------------------------------------

    def client(self, *, timeout: float = 10.0, authenticated: bool = True) -> httpx.Client:
        """An httpx client for this registry: base URL, TLS verified against the run's CA, basic auth."""
        auth = httpx.BasicAuth(*self.auth) if authenticated and self.auth is not None else None
        verify = self.ca.ssl_context()
        transport = resolving_transport(self.resolve, verify) if self.resolve else None
        return httpx.Client(base_url=self.url, verify=verify, timeout=timeout, auth=auth, transport=transport)


R = TypeVar("R", bound=Registry)


class Replicas(procs.Service, Mapping[str, R]):
    """Registries by region, started, healed and closed together; `replicas["eastus"].endpoint` etc."""

    def __init__(self, ca: CA, registries: Mapping[str, R]) -> None:
        self.ca = ca
        self._registries = dict(registries)

    def __getitem__(self, region: str) -> R:
        return self._registries[region]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registries)

    def __len__(self) -> int:
        return len(self._registries)

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
        procs.close_all(self.values())


class RegistrySet(Replicas[Registry]):
    """One Registry per region on 127.0.0.1 and a random port, started together."""

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
        registries = {
            region: Registry(
                region,
                ca,
                auth=auth,
                workdir=None if workdir is None else workdir / region,
                log_dir=log_dir,
                detach=detach,
            )
            for region in regions
        }
        super().__init__(ca, registries)
