"""Node addresses: one routable IPv4 address per node, a /32 on `lo` from 198.18.0.0/15, chosen per run.

A kubelet refuses a loopback `--node-ip` ("nodeIP can't be loopback address"), and a Node without an
address gives its hostNetwork Pods no podIP, so a Service selecting them has no endpoints: the API
server could not call a webhook behind one. 198.18.0.0/15 is reserved for benchmarking (RFC 2544) and
never routed, a /32 on `lo` is reachable from this host only, and each node gets its own, so the
processes of two hostNetwork Pods on two nodes can listen on the same port (each on its Pod's IP).

This is the one change the environment makes to the host's network: `remove()` (NodeEnvironment's
close, `make dev-down`) takes every address back off `lo`. The /24 is random per environment and
checked against the addresses already on the host, so two environments on one machine do not collide.
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
from collections.abc import Iterable

__all__ = ["NETWORK", "NodeAddressError", "add", "on_host", "pick", "remove"]

NETWORK = ipaddress.ip_network("198.18.0.0/15")


class NodeAddressError(RuntimeError):
    pass


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise NodeAddressError("the ip command is missing (Debian package: iproute2)") from None


def on_host() -> set[str]:
    """Every IPv4 address on this host's interfaces."""
    result = _ip("-o", "-4", "addr", "show")
    if result.returncode != 0:
        raise NodeAddressError(f"ip addr show: {result.stderr.strip()}")
    return {line.split()[3].split("/")[0] for line in result.stdout.splitlines() if len(line.split()) > 3}


def pick(count: int, *, attempts: int = 50, rng: random.Random | None = None) -> list[str]:
    """`count` addresses (.11, .12, ...) of a random 198.18.X.0/24 or 198.19.X.0/24 that has none on the host."""
    if not 0 < count <= 200:
        raise NodeAddressError(f"between 1 and 200 node addresses, not {count}")
    chooser = rng or random.SystemRandom()
    taken = {ipaddress.ip_address(a) for a in on_host()}
    for _ in range(attempts):
        block = ipaddress.ip_network(f"198.{chooser.randint(18, 19)}.{chooser.randint(0, 255)}.0/24")
        if not any(a in block for a in taken):
            return [str(block.network_address + 11 + i) for i in range(count)]
    raise NodeAddressError(f"no 198.18.0.0/15 /24 free of host addresses after {attempts} tries")


def add(addresses: Iterable[str]) -> None:
    for address in addresses:
        _check(address)
        result = _ip("addr", "add", f"{address}/32", "dev", "lo")
        if result.returncode != 0 and "File exists" not in result.stderr:
            raise NodeAddressError(f"ip addr add {address}/32 dev lo: {result.stderr.strip()} (needs root)")


def remove(addresses: Iterable[str]) -> None:
    """Take the addresses off `lo`; one that is not there is skipped."""
    present = on_host()
    for address in addresses:
        _check(address)
        if address in present:
            result = _ip("addr", "del", f"{address}/32", "dev", "lo")
            if result.returncode != 0:
                raise NodeAddressError(f"ip addr del {address}/32 dev lo: {result.stderr.strip()}")


def _check(address: str) -> None:
    """Only ever touch addresses of the benchmarking range: a typo must never take a real address down."""
    if ipaddress.ip_address(address) not in NETWORK:
        raise NodeAddressError(f"{address} is not a node address (198.18.0.0/15)")
