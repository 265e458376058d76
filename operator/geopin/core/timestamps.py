"""Timestamps as the Kubernetes API writes them (RFC 3339, UTC, ``Z``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["rfc3339"]


def rfc3339(seconds: float | None = None, *, micro: bool = False) -> str:
    """``seconds`` since the epoch (default: now) as ``2026-11-28T03:09:40Z``.

    ``micro``: with microseconds, the ``MicroTime`` of a Lease's ``acquireTime`` and ``renewTime``.
    """
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")
