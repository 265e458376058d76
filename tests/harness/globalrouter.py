"""The global endpoint emulator's process (standard library only, so it starts fast): a TCP pass-through
to the replica it routes to, health checks of every replica, and the routing rule with its delay.
`tests.harness.globalendpoint` describes the behaviour and starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.streams import pipe

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_FAILOVER_DELAY = 30.0
DEFAULT_CHECK_INTERVAL = 0.5


@dataclass
class Replica:
    region: str
    host: str
    port: int
    healthy: bool = True
    since: float = field(default_factory=time.monotonic)


@dataclass
class Router:
    """The routing decision, separate from the I/O: feed it health, ask it where to go."""

    replicas: list[Replica]
    failover_delay: float
    route: str = ""
    route_since: float = field(default_factory=time.time)
    switches: int = 0

    def __post_init__(self) -> None:
        self.route = self.route or self.replicas[0].region

    def replica(self, region: str) -> Replica:
        return next(r for r in self.replicas if r.region == region)

    def observe(self, region: str, healthy: bool, now: float) -> bool:
        """Record one check; True when the replica's health changed."""
        replica = self.replica(region)
        if replica.healthy == healthy:
            return False
        replica.healthy, replica.since = healthy, now
        return True

    def decide(self, now: float) -> bool:
        """Apply the routing rule; True when the route changed."""
        settled = [r for r in self.replicas if r.healthy and now - r.since >= self.failover_delay]
        current = self.replica(self.route)
        target: Replica | None = None
        if not current.healthy and now - current.since >= self.failover_delay:
            target = next((r for r in self.replicas if r.healthy), None)
        else:
            rank = self.replicas.index(current)
            target = next((r for r in settled if self.replicas.index(r) < rank), None)
        if target is None or target.region == self.route:
            return False
        self.route = target.region
        self.route_since = time.time()
        self.switches += 1
        return True

    def document(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "since": self.route_since,
            "switches": self.switches,
            "failoverDelaySeconds": self.failover_delay,
            "healthy": {r.region: r.healthy for r in self.replicas},
        }


async def _check(replica: Replica, context: ssl.SSLContext, seconds: float) -> bool:
    request = f"GET /v2/ HTTP/1.1\r\nHost: {replica.host}\r\nConnection: close\r\n\r\n".encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(replica.host, replica.port, ssl=context)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
        parts = status_line.split()
        return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()


class Emulator:
    def __init__(self, router: Router, context: ssl.SSLContext, state_path: Path, check_interval: float) -> None:
        self.router = router
        self.context = context
        self.state_path = state_path
        self.check_interval = check_interval

    def write_state(self) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.router.document(), indent=2) + "\n")
        os.replace(temporary, self.state_path)

    async def check_forever(self) -> None:
        timeout = max(1.0, self.check_interval * 2)
        while True:
            results = await asyncio.gather(*(_check(r, self.context, timeout) for r in self.router.replicas))
            now = time.monotonic()
            changed = False
            for replica, healthy in zip(self.router.replicas, results, strict=True):
                if self.router.observe(replica.region, healthy, now):
                    print(f"health {replica.region} {'healthy' if healthy else 'unhealthy'}", flush=True)
                    changed = True
            if self.router.decide(now):
                print(f"route {self.router.route}", flush=True)
                changed = True
            if changed:
                self.write_state()
            await asyncio.sleep(self.check_interval)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replica = self.router.replica(self.router.route)
        try:
            up_reader, up_writer = await asyncio.open_connection(replica.host, replica.port)
        except OSError:
            # The replica this name points at is down: the client's connection fails, as it would.
            writer.transport.abort()
            return

        def abort() -> None:
            up_writer.transport.abort()
            writer.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer, abort), pipe(up_reader, writer, abort))
        finally:
            abort()

    async def serve(self, ip: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, ip, port)
        self.write_state()
        print(f"routing https://{ip}:{port} to {self.router.route}", flush=True)
        async with server:
            await asyncio.gather(server.serve_forever(), self.check_forever())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.globalendpoint", description=__doc__)
    parser.add_argument("--listen", required=True, help="IP:PORT")
    parser.add_argument("--ca", required=True, help="the CA that signed the replicas' certificates")
    parser.add_argument("--state", required=True, type=Path, help="JSON file the route is written to")
    parser.add_argument("--upstream", action="append", required=True, metavar="REGION=IP:PORT", help="in order")
    parser.add_argument("--failover-delay", type=float, default=DEFAULT_FAILOVER_DELAY)
    parser.add_argument("--check-interval", type=float, default=DEFAULT_CHECK_INTERVAL)
    args = parser.parse_args(argv)
    replicas = []
    for item in args.upstream:
        region, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        replicas.append(Replica(region, host, int(port)))
    context = ssl.create_default_context(cafile=args.ca)
    router = Router(replicas, args.failover_delay)
    emulator = Emulator(router, context, args.state, args.check_interval)
    ip, _, port = args.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(emulator.serve(ip, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
