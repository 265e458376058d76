"""geopin's own in-memory view of the cluster: workloads, namespaces' labels, nodes' regions.

Filled once by a paginated LIST at start-up (so every decision sees the whole cluster from the
first moment: a restart computes the same status and writes nothing) and kept current by Kopf's
event handlers. geopin does not use ``kopf.index`` for these: Kopf makes every new object of an
indexed resource toggle the operator's readiness and wake every waiting per-object worker, which
grows with the square of the object count (the benchmark's 5,000 Deployments took minutes to start).
An entry is replaced only by a newer resourceVersion, so a LIST that races with a watch event never
brings an older object back.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["ObjectCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _version(resource_version: str | None) -> int:
    try:
        return int(resource_version or 0)
    except ValueError:
        return 0


@dataclass
class ObjectCache(Generic[K, V]):
    entries: dict[K, tuple[int, V]] = field(default_factory=dict)
    # A deleted key's last version: a LIST snapshot older than the deletion does not resurrect it.
    _deleted: dict[K, int] = field(default_factory=dict)
    changes: int = 0  # bumped whenever an entry changes: what is derived from all entries can be kept till then

    def upsert(self, key: K, resource_version: str | None, value: V) -> None:
        version = _version(resource_version)
        if self._deleted.get(key, -1) >= version > 0:
            return
        current = self.entries.get(key)
        if current is None or version == 0 or version >= current[0]:
            self.entries[key] = (version, value)
            self._deleted.pop(key, None)
            if current is None or current[1] != value:
                self.changes += 1

    def discard(self, key: K, resource_version: str | None = None) -> None:
        if self.entries.pop(key, None) is not None:
            self.changes += 1
        self._deleted[key] = _version(resource_version)

    def get(self, key: K) -> V | None:
        found = self.entries.get(key)
        return found[1] if found is not None else None

    def values(self) -> list[V]:
        return [value for _, value in self.entries.values()]

    def items(self) -> Iterator[tuple[K, V]]:
        return ((key, value) for key, (_, value) in list(self.entries.items()))

    def __len__(self) -> int:
        return len(self.entries)
