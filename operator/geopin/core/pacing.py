"""The pace of template repoints: a token bucket per policy (pure: the caller passes the clock).

A switch (failover, failback, a changed replica list) can move thousands of templates, and every move
is a rolling update that pulls from the one replica left (ACR throttles per replica). The reconciler
takes a slot from the policy's bucket before each such write. The bucket holds at most one token, so
writes are evenly spaced, never a burst: ``maxRepointsPerSecond: 5`` is one write every 0.2 s.
Slots are reserved ahead (the count may go below zero), so concurrent workers queue in order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenBucket"]


@dataclass
class TokenBucket:
    rate: float  # tokens per second, > 0
    tokens: float = 1.0
    updated: float | None = None

    def reserve(self, now: float) -> float:
        """Take the next slot; the seconds to wait until it (0.0 when it is now)."""
        if self.updated is not None:
            self.tokens = min(1.0, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
