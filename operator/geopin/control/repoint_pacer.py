"""Template repoints take turns: one token bucket per policy (``spec.failover.maxRepointsPerSecond``).

A worker about to move a template's pin (a failover, a failback, a changed replica list) waits for its
policy's next slot; first pins, restores and a user's own edits never wait. Which queued workloads
still have to move is exported as ``geopin_template_repoints_pending{policy}``, so an SRE sees a
paced repoint progress instead of guessing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from geopin.core.pacing import TokenBucket
from geopin.core.workloads import WorkloadRef
from geopin.io import metrics

__all__ = ["RepointPacer"]


class RepointPacer:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}
        self._pending: dict[str, set[WorkloadRef]] = {}

    def queued(self, policy: str, ref: WorkloadRef) -> None:
        """``ref`` is queued for a write that moves its pin."""
        refs = self._pending.setdefault(policy, set())
        if ref not in refs:
            refs.add(ref)
            metrics.TEMPLATE_REPOINTS_PENDING.labels(policy).set(len(refs))

    def done(self, ref: WorkloadRef) -> None:
        """A worker is through with ``ref`` (written, or nothing left to do)."""
        for policy, refs in self._pending.items():
            if ref in refs:
                refs.discard(ref)
                metrics.TEMPLATE_REPOINTS_PENDING.labels(policy).set(len(refs))

    def pending(self, policy: str) -> int:
        return len(self._pending.get(policy, ()))

    def clear(self) -> None:
        """This replica stops writing: nothing is pending here any more."""
        for policy in self._pending:
            metrics.TEMPLATE_REPOINTS_PENDING.labels(policy).set(0)
        self._pending.clear()

    async def turn(self, policy: str, per_second: int) -> bool:
        """Wait for the policy's next slot (at once when it is unpaced: ``per_second`` 0); did it wait?"""
        if per_second <= 0:
            return False
        bucket = self._buckets.get(policy)
        if bucket is None or bucket.rate != per_second:
            bucket = self._buckets[policy] = TokenBucket(float(per_second))
        delay = bucket.reserve(self._clock())
        if delay <= 0:
            return False
        interval = 1.0 / per_second
        while True:
            slot = self._clock() + delay
            await self._sleep(delay)  # the pace itself: a rate, not a synchronisation
            if self._clock() - slot <= interval:
                return True
            # The event loop stalled (a starved CPU, a paused process) past several slots, and every
            # worker that overslept wakes at once: each takes a fresh slot rather than write in a burst.
            delay = bucket.reserve(self._clock())
            if delay <= 0:
                return True
