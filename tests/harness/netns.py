"""The local environment's own network: a private network namespace where nodes have addresses of their own.

A kubelet refuses a loopback `--node-ip` ("nodeIP can't be loopback address"), and a Node without an
address gives its hostNetwork Pods no podIP, so a Service selecting them has no endpoints: the API
server could not call a webhook behind one (`make install-local`). The host's network is never
changed for that: `make dev-up` moves its own process into a new network namespace first
(`unshare(CLONE_NEWNET)`), brings `lo` up there, and puts one /32 per node from 198.18.0.0/15 (reserved
for benchmarking, RFC 2544) on that namespace's own `lo`. Everything `up` starts after that
(control plane, replicas, nodes, the name space holder) inherits the namespace; `.dev/run` enters it
with the mount namespace; it disappears with the last process `down` stops. Nothing is left to undo.

    unshare_network(addresses("nodes", 2))   # this process (single-threaded: a CLI's start) moves
    with inside(holder_pid): ...             # this thread's new sockets open in the environment's
                                             # network (the tests' own clients), then it moves back
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["NETWORK", "NetnsError", "addresses", "inside", "on_host", "unshare_network"]

NETWORK = ipaddress.ip_network("198.18.0.0/15")
_FIRST_NODE = ipaddress.ip_address("198.18.0.11")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def addresses(count: int) -> list[str]:
    """Node addresses 198.18.0.11, .12, ...: fixed, since each environment has a network of its own."""
    if not 0 <= count <= 200:
        raise NetnsError(f"between 0 and 200 node addresses, not {count}")
    return [str(_FIRST_NODE + i) for i in range(count)]


def _ip(*args: str) -> str:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise NetnsError("the ip command is missing (Debian package: iproute2)") from None
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unshare_network(node_addresses: Iterable[str]) -> None:
    """Move this process into a new network namespace: its `lo` up, with `node_addresses` on it.

    Call it while the process has one thread (a namespace switch is per thread; children and threads
    started later inherit it).
    """
    if os.geteuid() != 0:
        raise NetnsError("a network namespace of its own needs root")
    if _libc.unshare(_CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
    _ip("link", "set", "lo", "up")
    for address in node_addresses:
        if ipaddress.ip_address(address) not in NETWORK:
            raise NetnsError(f"{address} is not a node address (198.18.0.0/15)")
        _ip("addr", "add", f"{address}/32", "dev", "lo")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns(CLONE_NEWNET): {os.strerror(errno)}")


@contextlib.contextmanager
def inside(pid: int) -> Iterator[None]:
    """This thread in the network namespace of process `pid` for the block, then back where it was.

    Sockets keep the namespace they were opened in: a client connected inside stays connected there.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def on_host() -> set[str]:
    """Every IPv4 address on this thread's network namespace's interfaces."""
    return {line.split()[3].split("/")[0] for line in _ip("-o", "-4", "addr", "show").splitlines() if line.split()[3:]}
