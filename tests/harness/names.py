"""ACR-shaped names for the local environment: which name, which loopback address, and where it resolves.

    names = AcrNames("contoso")              # contoso.azurecr.io, contoso.<region>.geo.azurecr.io, ...
    block = LoopbackBlock.pick()             # 127.X.Y.0/24, X and Y random, every address free on :443
    ns = HostsNamespace(workdir)             # a private mount namespace with its own /etc/hosts
    ns.add(names.regional("eastus"), block.next())
    ns.start()
    subprocess.run(ns.command(["getent", "hosts", "contoso.eastus.geo.azurecr.io"]))

The namespace is a long-lived holder process (`unshare --mount --propagation private`, then `mount --bind`
of a generated hosts file over /etc/hosts, then `sleep infinity`); `nsenter --mount` puts any command in it.
Nothing else differs inside: same network, same files, same processes. The names resolve nowhere else.
The harness's own HTTP clients stay outside and use `resolving_transport()` to reach the same addresses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpcore
import httpx

from tests.harness import procs
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

SYSTEM_HOSTS = Path("/etc/hosts")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HTTPS_PORT = 443
_HOLDER_SCRIPT = 'mount --bind "$1" /etc/hosts && exec sleep infinity'


class NamesError(RuntimeError):
    pass


def require_root(what: str) -> None:
    """One clear line instead of an EPERM deep inside unshare or bind()."""
    if os.geteuid() != 0:
        raise NamesError(f"{what} needs root (a private mount namespace and port 443 on loopback addresses)")


@dataclass(frozen=True)
class AcrNames:
    """The host names of one Azure Container Registry: `name` is its first label ("contoso")."""

    name: str = "contoso"
    suffix: str = "azurecr.io"

    @property
    def login_server(self) -> str:
        """The global endpoint, `contoso.azurecr.io`."""
        return f"{self.name}.{self.suffix}"

    def regional(self, region: str) -> str:
        """`contoso.<region>.geo.azurecr.io`: one replica, never routed elsewhere."""
        return f"{self.name}.{region}.geo.{self.suffix}"

    def data(self, region: str) -> str:
        """`contoso.<region>.data.azurecr.io`: where that replica's blob downloads are redirected."""
        return f"{self.name}.{region}.data.{self.suffix}"


def _free_on_https(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, HTTPS_PORT))
        except OSError as error:
            if error.errno == errno.EACCES:
                raise NamesError(f"binding {address}:{HTTPS_PORT} needs root") from None
            return False
    return True


@dataclass
class LoopbackBlock:
    """127.X.Y.0/24 for one environment; `next()` hands out .1, .2, ... in order.

    Linux routes all of 127.0.0.0/8 to `lo`, so any of these addresses can be bound without configuring
    an interface. X and Y are random per environment, so two environments on one machine do not collide.
    """

    prefix: str
    _last: int = field(default=0, init=False)

    @classmethod
    def pick(cls, *, needed: int = 16, attempts: int = 50, rng: random.Random | None = None) -> LoopbackBlock:
        """A random block whose first `needed` addresses nobody listens on at :443 right now."""
        chooser = rng or random.SystemRandom()
        for _ in range(attempts):
            prefix = f"127.{chooser.randint(1, 254)}.{chooser.randint(1, 254)}"
            if all(_free_on_https(f"{prefix}.{n}") for n in range(1, needed + 1)):
                return cls(prefix)
        raise NamesError(f"no free 127.X.Y.0/24 block with {needed} addresses free on :443 after {attempts} tries")

    def next(self) -> str:
        if self._last >= 254:
            raise NamesError(f"loopback block {self.prefix}.0/24 is exhausted")
        self._last += 1
        return f"{self.prefix}.{self._last}"


def _mount_namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


class HostsNamespace(procs.Service):
    """A private mount namespace whose /etc/hosts is `hosts_path` (the system's lines plus `add()`ed ones).

    `start()` spawns the holder; `command(argv)` prefixes argv with nsenter into it; `stop()` ends the
    holder (the namespace lives on while processes started in it run). `add()` works before and after
    start: the bind mount shows the file's inode, so the file is only ever appended to or rewritten in
    place, never replaced. Attributes: `hosts_path`, `entries` ({host: ip}), `pid` once started.
    """

    def __init__(self, workdir: Path, *, log_dir: Path | None = None, detach: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir or self.workdir
        self.detach = detach
        self.hosts_path = self.workdir / "hosts"
        self.entries: dict[str, str] = {}
        self.process: procs.Process | None = None
        self._write_all()

    # -- the hosts file ------------------------------------------------------------------------

    def _write_all(self) -> None:
        base = SYSTEM_HOSTS.read_text() if SYSTEM_HOSTS.exists() else "127.0.0.1 localhost\n"
        if base and not base.endswith("\n"):
            base += "\n"
        lines = "".join(f"{ip} {host}\n" for host, ip in self.entries.items())
        text = f"{base}# geopin local environment (names resolve only inside this mount namespace)\n{lines}"
        mode = "r+" if self.hosts_path.exists() else "w"
        with self.hosts_path.open(mode) as hosts:
            hosts.write(text)
            hosts.truncate()

    def add(self, host: str, ip: str) -> None:
        """Resolve `host` to `ip` inside the namespace (at once for new names: the line is appended)."""
        host = host.lower()
        known = self.entries.get(host)
        if known == ip:
            return
        self.entries[host] = ip
        if known is None:
            with self.hosts_path.open("a") as hosts:
                hosts.write(f"{ip} {host}\n")
        else:
            self._write_all()

    def add_all(self, entries: Mapping[str, str]) -> None:
        for host, ip in entries.items():
            self.add(host, ip)

    # -- the holder ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.process is None:
            raise NamesError("the hosts namespace was never started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def start(self, timeout: float = 10.0) -> None:
        require_root("the private name space")
        if self.alive():
            raise NamesError("the hosts namespace is already running")
        outside = _mount_namespace("self")
        self.process = procs.spawn(
            "hosts-namespace",
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HOLDER_SCRIPT, "sh", str(self.hosts_path)],
            self.log_dir / "hosts-namespace.log",
            detach=self.detach,
        )
        process = self.process

        def mounted() -> bool:
            # The shell execs `sleep` only once the bind mount is in place.
            if not process.alive():
                raise NamesError(f"the hosts namespace holder exited: {process.log_tail()}")
            cmdline = procs.pid_cmdline(process.pid)
            return bool(cmdline) and cmdline[0] == "sleep" and _mount_namespace(process.pid) != outside

        wait_until(mounted, timeout=timeout, interval=0.01, what="the hosts namespace holder")

    def stop(self) -> None:
        if self.process is not None:
            procs.terminate([self.process], timeout=5.0)

    def close(self) -> None:
        self.stop()

    def command(self, argv: Sequence[str], *, cwd: Path | str | None = None) -> list[str]:
        """`argv` run inside the namespace, in `cwd` (default: this process's working directory)."""
        workdir = Path(cwd) if cwd is not None else Path.cwd()
        return ["nsenter", f"--target={self.pid}", "--mount", f"--wd={workdir}", "--", *argv]

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """subprocess.run of `argv` inside the namespace, text mode, output captured, never raising on exit."""
        return subprocess.run(self.command(argv), check=False, capture_output=True, text=True, env=env, timeout=timeout)


def write_ca_bundle(path: Path, extra_pems: Iterable[bytes]) -> Path:
    """The system's CAs plus `extra_pems`, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE inside the namespace."""
    system = SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.exists() else b""
    parts = [system.rstrip(b"\n") + b"\n"] if system else []
    parts.extend(pem.rstrip(b"\n") + b"\n" for pem in extra_pems)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


# -- the harness's own clients, outside the namespace ------------------------------------------------


class _ResolvingBackend(httpcore.NetworkBackend):
    """Connects to the mapped address of a host name; TLS still checks the certificate for the name."""

    def __init__(self, hosts: Mapping[str, str]) -> None:
        self._hosts = {host.lower(): ip for host, ip in hosts.items()}
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._hosts.get(host.lower(), host)
        return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def resolving_transport(hosts: Mapping[str, str], verify: ssl.SSLContext) -> httpx.HTTPTransport:
    """An httpx transport that resolves `hosts` ({name: ip}) itself, as /etc/hosts does in the namespace.

    httpx has no resolver hook; its transport's connection pool takes an httpcore network backend, so
    the pool is rebuilt with one that maps names (same defaults as httpx's own pool otherwise).
    """
    transport = httpx.HTTPTransport(verify=verify)
    transport._pool = httpcore.ConnectionPool(ssl_context=verify, network_backend=_ResolvingBackend(hosts))
    return transport


def resolves_in(namespace: HostsNamespace, host: str) -> str | None:
    """The address `host` resolves to inside `namespace` (getent, i.e. glibc's resolver), or None."""
    result = namespace.run(["getent", "ahostsv4", host])
    if result.returncode != 0 or not result.stdout.split():
        return None
    return result.stdout.split()[0]


def resolves_outside(host: str) -> str | None:
    with contextlib.suppress(socket.gaierror):
        return socket.gethostbyname(host)
    return None
