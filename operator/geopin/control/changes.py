"""What woke the leader's loops: a change that may move workloads, or one that may alter a status.

Producers (probe loops, workers, event handlers) set flags and never wait; each consumer awaits its own
``asyncio.Event`` instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Changes", "wait_for_event"]


class Changes:
    def __init__(self) -> None:
        self.status = asyncio.Event()  # a status may differ: the reporter recounts
        self.usable = asyncio.Event()  # a policy's usable replicas changed: repoint now
        self.usable_policies: set[str] = set()

    def touch(self) -> None:
        """A write, or a cluster change (a node's region, a namespace's labels): statuses may differ."""
        self.status.set()

    def usable_changed(self, policy: str) -> None:
        self.usable_policies.add(policy)
        self.usable.set()
        self.status.set()

    def take_usable(self) -> set[str]:
        """The policies whose usable replicas changed since the last call."""
        self.usable.clear()
        taken, self.usable_policies = self.usable_policies, set()
        return taken


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds``; was it set?"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
    return event.is_set()
