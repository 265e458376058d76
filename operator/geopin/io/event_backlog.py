"""Workload Events wait while workloads are being repointed, then go out a few at a time.

A failover of thousands of workloads posts one Event per workload ("Repinned"). Posted as they
happen, they were half of the API requests during the repoint and slowed it by a third (bench/
failover.py). Queued here instead, they go out once the workers are idle, or when the oldest has
waited ``defer_seconds``, so that a long busy spell never starves them. The queue is bounded: Events
are best effort in Kubernetes, and the oldest one is dropped (and counted) rather than memory grown.
Events about a policy (a replica's health, an endpoint switch) are few and go out at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from geopin.io.kube import KubeAPI

__all__ = ["EventBacklog", "PendingEvent"]

logger = logging.getLogger(__name__)

DEFER_SECONDS = 30.0
LIMIT = 20_000
POSTERS = 2  # Kube posts Events on a pool of two threads


@dataclass(frozen=True, slots=True)
class PendingEvent:
    queued_at: float
    involved: Mapping[str, Any]
    type: str
    reason: str
    message: str
    once: bool


class EventBacklog:
    """``idle`` is set while the workers have nothing to do (the reconciler keeps it current)."""

    def __init__(
        self,
        kube: KubeAPI,
        idle: asyncio.Event,
        *,
        defer_seconds: float = DEFER_SECONDS,
        limit: int = LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.idle = idle
        self.defer_seconds = defer_seconds
        self.clock = clock
        self.pending: deque[PendingEvent] = deque(maxlen=limit)
        self.urgent: deque[PendingEvent] = deque(maxlen=limit)
        self.dropped = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(
        self,
        involved: Mapping[str, Any],
        type: str,
        reason: str,
        message: str,
        once: bool = False,
        *,
        urgent: bool = False,
    ) -> None:
        """Queue an Event; ``urgent`` ones (about policies) do not wait for the workers."""
        queue = self.urgent if urgent else self.pending
        if len(queue) == queue.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("%d Events dropped: more than %d were waiting to be posted", self.dropped, queue.maxlen)
        queue.append(PendingEvent(self.clock(), involved, type, reason, message, once))
        self._wakeup.set()

    def take(self) -> PendingEvent | None:
        """The next Event to post now, or None: nothing waits, or workers are busy and it is young."""
        if self.urgent:
            return self.urgent.popleft()
        if not self.pending:
            return None
        if not self.idle.is_set() and self.clock() - self.pending[0].queued_at < self.defer_seconds:
            return None
        return self.pending.popleft()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._post(), name=f"geopin-events-{i}") for i in range(POSTERS)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.pending.clear()  # a replica that stops leading leaves the Events to the next leader
        self.urgent.clear()

    async def _post(self) -> None:
        while True:
            event = self.take()
            if event is not None:
                await self.kube.post_event(event.involved, event.type, event.reason, event.message, once=event.once)
                continue
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Workers busy, the oldest still young: wait for idle workers, its deadline, or an urgent one.
            deadline = self.pending[0].queued_at + self.defer_seconds - self.clock()
            self._wakeup.clear()
            waits = [asyncio.ensure_future(self.idle.wait()), asyncio.ensure_future(self._wakeup.wait())]
            try:
                await asyncio.wait(waits, timeout=max(deadline, 0.0), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
