"""Which registry hosts a workload's pull secrets are keyed for: read on demand, cached.

``nodeImageCheck: Enforce`` keeps a workload on a regional host only when its own imagePullSecrets
give the kubelet credentials there (the nodes' own do not). Deciding that needs each secret's keys,
which only a GET of the Secret tells. geopin reads a secret when a decision first needs it (the
worker's lookup, like a manifest HEAD for replication), keeps only the keys (never a credential),
and re-reads entries older than ``ttl`` from the status loop, so a key added later is noticed
without a watch on every Secret in the cluster (which would need list/watch on all of them).

A missing, unreadable (403: geopin's RBAC has no ``get`` there) or malformed secret has no keys:
the workload is treated as having no regional credentials, the safe side for Enforce. Any other
API error leaves the entry unknown, and the next pass asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubernetes.client.exceptions import ApiException

from geopin.core.pullsecrets import MalformedPullSecret, parse_dockerconfig

if TYPE_CHECKING:
    from geopin.io.kube import KubeAPI

__all__ = ["PullSecretKeys"]

logger = logging.getLogger(__name__)

SecretRef = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class _Entry:
    keys: tuple[str, ...]
    read_at: float


class PullSecretKeys:
    def __init__(self, ttl: float = 300.0, concurrency: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[SecretRef, _Entry] = {}
        self._limit = asyncio.Semaphore(concurrency)

    def get(self, namespace: str, name: str) -> tuple[str, ...] | None:
        """The keys last read (even past ``ttl``: decisions do not flap while a re-read is due)."""
        entry = self._entries.get((namespace, name))
        return None if entry is None else entry.keys

    def stale(self) -> list[SecretRef]:
        now = self.clock()
        return [ref for ref, entry in self._entries.items() if now - entry.read_at >= self.ttl]

    async def resolve(self, kube: KubeAPI, refs: Iterable[SecretRef]) -> None:
        await asyncio.gather(*(self._read(kube, namespace, name) for namespace, name in set(refs)))

    async def refresh_stale(self, kube: KubeAPI) -> bool:
        """Re-read every entry older than ``ttl``; True when any secret's keys changed."""
        stale = self.stale()
        if not stale:
            return False
        before = {ref: self._entries[ref].keys for ref in stale}
        await self.resolve(kube, stale)
        return any(self.get(*ref) != keys for ref, keys in before.items())

    async def _read(self, kube: KubeAPI, namespace: str, name: str) -> None:
        async with self._limit:
            try:
                data = await kube.get_secret_data(namespace, name)
            except ApiException as e:
                if e.status != 403:
                    logger.warning("reading pull secret %s/%s failed (%s); asking again later", namespace, name, e)
                    return
                logger.warning(
                    "pull secret %s/%s: geopin may not read it (403); taken as no regional credentials",
                    namespace,
                    name,
                )
                data = None
        keys: tuple[str, ...] = ()
        if data is not None:
            try:
                keys = tuple(parse_dockerconfig(data))
            except MalformedPullSecret as e:
                logger.warning("pull secret %s/%s is not usable: %s", namespace, name, e)
        self._entries[(namespace, name)] = _Entry(keys, self.clock())
