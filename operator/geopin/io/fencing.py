"""Writes fenced at the socket: a replica that lost the Lease sends no write, even one already under way.

The Kubernetes API has no fencing token: a write is accepted from whoever sends it. So the sender
asks "do I still surely hold the Lease?" as late as it can. Asking before the API client's call left
a window (building the request, taking a pooled connection or opening a new one with its TLS
handshake: milliseconds under load) in which a paused process (SIGSTOP, a frozen VM) could stop
after the answer and send its write on waking, after another replica took over. Here urllib3's
connection asks again in ``request()``, after any connect and right before the first byte of the
request goes out; what remains is http.client composing the request line and headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import urllib3

__all__ = ["NotLeading", "fence_writes"]

READS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotLeading(Exception):
    """A write this replica refused to send: it does not hold the Lease, or cannot be sure it still does."""


def refusal(method: str, url: str) -> NotLeading:
    return NotLeading(f"{method} {url.split('?', 1)[0]}: not sent, this replica does not hold the Lease")


def fence_writes(pool_manager: urllib3.PoolManager, may_write: Callable[[], bool]) -> None:
    """Make every connection ``pool_manager`` opens from now on refuse a write unless ``may_write()``."""

    def fenced(pool_class: type[urllib3.HTTPConnectionPool]) -> type[urllib3.HTTPConnectionPool]:
        connection_class: Any = pool_class.ConnectionCls

        class FencedConnection(connection_class):  # type: ignore[misc]  # a class chosen at run time
            def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
                if method not in READS and not may_write():
                    raise refusal(method, url)
                super().request(method, url, *args, **kwargs)

        FencedConnection.__name__ = f"Fenced{connection_class.__name__}"
        return type(f"Fenced{pool_class.__name__}", (pool_class,), {"ConnectionCls": FencedConnection})

    pool_manager.pool_classes_by_scheme = {
        scheme: fenced(pool_class) for scheme, pool_class in pool_manager.pool_classes_by_scheme.items()
    }
    pool_manager.clear()  # pools opened before this used unfenced connections
