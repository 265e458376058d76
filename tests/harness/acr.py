"""Replicas that look like a geo-replicated Azure Container Registry, with ACR's names, inside a name space.

    with AcrRegistrySet(ca, workdir=tmp) as acr:           # needs root
        acr["eastus"].host        # "contoso.eastus.geo.azurecr.io"
        acr["eastus"].ip          # "127.X.Y.N" (random per run), served on :443
        acr["eastus"].data_host   # "contoso.eastus.data.azurecr.io" (blob downloads 307 there)
        acr.data["eastus"]        # its DataEndpoint: .stop(), .set_mode("http_503"), .heal()
        acr.global_endpoint       # GlobalEndpoint for "contoso.azurecr.io": .route(), .failover_delay
        acr.auth                  # (username, password), the same on every replica, required by each
        acr.namespace             # HostsNamespace where every name above resolves: .command(argv)
        acr.ca_bundle             # the system's CAs plus the run's CA (SSL_CERT_FILE in the namespace)
        acr["eastus"].client()    # httpx client from outside the namespace: by name, TLS, basic auth

Each replica is a real docker-registry on its own loopback address and port 443, with TLS from the run's
CA for its regional name, the global name and its address, htpasswd auth, and the `redirect` storage
middleware pointing blob downloads at its data endpoint. Replicas are `Registry` objects, so the
faults (`pause()`, `stop()`, `restart()`, `heal()`) and `ReplicationEmulator` work as with `RegistrySet`.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.harness import procs
from tests.harness.dataendpoint import DataEndpoint
from tests.harness.globalendpoint import GlobalEndpoint
from tests.harness.globalrouter import DEFAULT_CHECK_INTERVAL, DEFAULT_FAILOVER_DELAY
from tests.harness.names import (
    HTTPS_PORT,
    AcrNames,
    HostsNamespace,
    LoopbackBlock,
    require_root,
    resolving_transport,
    write_ca_bundle,
)
from tests.harness.registries import DEFAULT_REGIONS, Registry, Replicas

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tests.harness.pki import CA

DEFAULT_USERNAME = "contoso"


class AcrReplica(Registry):
    """A Registry with its data endpoint's name: `data_host`, `data_ip` (see AcrRegistrySet)."""

    def __init__(self, name: str, ca: CA, *, data_host: str, data_ip: str, **kwargs: Any) -> None:
        self.data_host = data_host
        self.data_ip = data_ip
        super().__init__(name, ca, **kwargs)


class AcrRegistrySet(Replicas[AcrReplica]):
    """One ACR-shaped replica per region, their data endpoints, the global endpoint and the name space.

    `regions` are in the global endpoint's routing order (the first is its home). `namespace` may be one
    the caller owns (started or not); by default the set makes and owns its own.
    """

    def __init__(
        self,
        ca: CA,
        regions: Sequence[str] = DEFAULT_REGIONS,
        *,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        names: AcrNames | None = None,
        auth: tuple[str, str] | None = None,
        detach: bool = False,
        global_failover_delay: float = DEFAULT_FAILOVER_DELAY,
        global_check_interval: float = DEFAULT_CHECK_INTERVAL,
        namespace: HostsNamespace | None = None,
        block: LoopbackBlock | None = None,
    ) -> None:
        require_root("the ACR-shaped registries")
        self.names = names or AcrNames()
        self.auth = auth or (DEFAULT_USERNAME, secrets.token_urlsafe(18))
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="geopin-acr-")
            workdir = Path(self._tempdir.name)
        self.workdir = workdir
        self.log_dir = log_dir or workdir / "logs"
        self.block = block or LoopbackBlock.pick(needed=1 + 2 * len(regions))
        self._owns_namespace = namespace is None
        self.namespace = namespace or HostsNamespace(workdir / "namespace", log_dir=self.log_dir, detach=detach)
        self.login_server = self.names.login_server
        global_ip = self.block.next()
        self.hosts: dict[str, str] = {self.login_server: global_ip}
        replicas: dict[str, AcrReplica] = {}
        self.data: dict[str, DataEndpoint] = {}
        for region in regions:
            host, data_host = self.names.regional(region), self.names.data(region)
            ip, data_ip = self.block.next(), self.block.next()
            self.hosts[host] = ip
            self.hosts[data_host] = data_ip
            replica = AcrReplica(
                region,
                ca,
                data_host=data_host,
                data_ip=data_ip,
                auth=self.auth,
                workdir=workdir / "registries" / region,
                log_dir=self.log_dir,
                port=HTTPS_PORT,
                detach=detach,
                ip=ip,
                host=host,
                tls_hosts=(self.login_server,),
                redirect_url=f"https://{data_host}",
                resolve={data_host: data_ip},
            )
            replicas[region] = replica
            self.data[region] = DataEndpoint(
                data_host,
                data_ip,
                replica.workdir / "data",
                ca,
                workdir=workdir / "data" / region,
                log_dir=self.log_dir,
                detach=detach,
            )
        super().__init__(ca, replicas)
        self.global_endpoint = GlobalEndpoint(
            self.login_server,
            global_ip,
            {region: replica.address for region, replica in replicas.items()},
            ca,
            workdir=workdir / "global",
            log_dir=self.log_dir,
            failover_delay=global_failover_delay,
            check_interval=global_check_interval,
            detach=detach,
        )
        self.ca_bundle = write_ca_bundle(workdir / "ca-bundle.crt", [ca.cert_pem])

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        try:
            self.namespace.add_all(self.hosts)
            if not self.namespace.alive():
                self.namespace.start()
            for region, replica in self.items():
                replica.start(wait=False)
                self.data[region].start(wait=False)
            for region, replica in self.items():
                replica.wait_ready()
                self.data[region].wait_ready()
            self.global_endpoint.start()
        except BaseException:
            self.close()
            raise
        print(
            f"{len(self)} ACR-shaped replicas, their data endpoints and {self.login_server} ready in "
            f"{time.monotonic() - began:.1f}s on {self.block.prefix}.0/24",
            file=sys.stderr,
        )

    def heal(self) -> None:
        """Undo every fault a test may have left: replicas and data endpoints serve again."""
        super().heal()
        for data in self.data.values():
            data.heal()

    def close(self) -> None:
        """Stop everything (the first error is re-raised once all are stopped) and remove a temp workdir."""
        try:
            procs.close_all([self.global_endpoint, *self.data.values(), *self.values()])
        finally:
            if self._owns_namespace:
                self.namespace.stop()
            if self._tempdir is not None:
                self._tempdir.cleanup()
                self._tempdir = None

    @property
    def processes(self) -> list[procs.Process]:
        """Every process the set started (for `.dev/processes.json`), the namespace holder last."""
        started = [self.global_endpoint.process, *(d.process for d in self.data.values())]
        started += [r.process for r in self.values()]
        if self._owns_namespace:
            started.append(self.namespace.process)
        return [p for p in started if p is not None]

    # -- use -------------------------------------------------------------------------------------

    def command(self, argv: Sequence[str], *, cwd: Path | str | None = None) -> list[str]:
        """`argv` run inside the name space (see HostsNamespace.command); pass `env()` along with it."""
        return self.namespace.command(argv, cwd=cwd)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a process in the name space: the run's CA trusted through the bundle."""
        env = dict(os.environ if base is None else base)
        env["SSL_CERT_FILE"] = str(self.ca_bundle)
        env["REQUESTS_CA_BUNDLE"] = str(self.ca_bundle)
        return env

    def client(self, region: str = "global", *, authenticated: bool = True, timeout: float = 10.0) -> httpx.Client:
        """An httpx client (outside the name space) for a replica's name, or for the global endpoint."""
        if region != "global":
            return self[region].client(authenticated=authenticated, timeout=timeout)
        verify = self.ca.ssl_context()
        auth = httpx.BasicAuth(*self.auth) if authenticated else None
        return httpx.Client(
            base_url=f"https://{self.login_server}",
            timeout=timeout,
            auth=auth,
            transport=resolving_transport(self.hosts, verify),
        )

    def describe(self) -> dict[str, dict[str, Any]]:
        """The `registries.json` entries of the local environment contract (docs/architecture.md)."""
        username, password = self.auth
        described: dict[str, dict[str, Any]] = {}
        for region, replica in self.items():
            data = self.data[region]
            described[region] = {
                "endpoint": replica.address,
                "host": replica.host,
                "ip": replica.ip,
                "pid": replica.pid,
                "data_host": data.host,
                "data_ip": data.ip,
                "data_pid": data.pid,
                "username": username,
                "password": password,
            }
        described["global"] = {
            "endpoint": f"{self.global_endpoint.ip}:{self.global_endpoint.port}",
            "host": self.login_server,
            "ip": self.global_endpoint.ip,
            "pid": self.global_endpoint.pid,
            "order": self.global_endpoint.order,
            "failover_delay_seconds": self.global_endpoint.failover_delay,
            "state": str(self.global_endpoint.state_path),
            "username": username,
            "password": password,
        }
        return described
