"""geopin's own in-memory view of the cluster: workloads, namespaces' labels, nodes (region, node image).

Filled once by a paginated LIST at start-up (so every decision sees the whole cluster from the
first moment: a restart computes the same status and writes nothing) and kept current by Kopf's
event handlers. geopin does not use ``kopf.index`` for these: Kopf makes every new object of an
indexed resource toggle the operator's readiness and wake every waiting per-object worker, which
grows with the square of the object count (the benchmark's 5,000 Deployments took minutes to start).
An entry is replaced only by a newer resourceVersion, so a LIST that races with a watch event never
brings an older object back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from geopin.core.nodes import NodeInfo, node_info
from geopin.core.policy import cluster_region_of
from geopin.core.redirect import owner_candidates
from geopin.core.workloads import (
    ANNOTATION_PINNED_REGION,
    KINDS,
    PATCH_KINDS,
    WorkloadRef,
    WorkloadView,
    tracked,
    view_of,
)

if TYPE_CHECKING:
    from geopin.io.kube import KubeAPI

__all__ = ["ClusterCache", "NodeCache", "ObjectCache"]

logger = logging.getLogger(__name__)

TOMBSTONES = 10_000  # deleted keys remembered; older ones cannot be in a LIST still in flight

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
        self._deleted.pop(key, None)
        self._deleted[key] = _version(resource_version)
        if len(self._deleted) > TOMBSTONES:
            del self._deleted[next(iter(self._deleted))]

    def get(self, key: K) -> V | None:
        found = self.entries.get(key)
        return found[1] if found is not None else None

    def values(self) -> list[V]:
        return [value for _, value in self.entries.values()]

    def items(self) -> Iterator[tuple[K, V]]:
        return ((key, value) for key, (_, value) in list(self.entries.items()))

    def __len__(self) -> int:
        return len(self.entries)


class NodeCache:
    """What geopin keeps of each node (region, AKS node image, pool, cordon) and the cluster's region
    (the one most nodes carry), kept with them.

    Nodes send an event on every status update (a heartbeat); only a change of what is kept counts.
    """

    def __init__(self) -> None:
        self.nodes: ObjectCache[str, NodeInfo] = ObjectCache()
        self.region: str | None = None

    @property
    def changes(self) -> int:
        """Bumped whenever a node's kept fields change: what is derived from all nodes is kept till then."""
        return self.nodes.changes

    def values(self) -> list[NodeInfo]:
        return self.nodes.values()

    def upsert(self, name: str, resource_version: str | None, node: NodeInfo) -> bool:
        """A node as seen now; True when anything geopin keeps of it changed."""
        before = self.nodes.changes
        self.nodes.upsert(name, resource_version, node)
        return self._changed(before)

    def discard(self, name: str, resource_version: str | None) -> bool:
        before = self.nodes.changes
        self.nodes.discard(name, resource_version)
        return self._changed(before)

    def _changed(self, before: int) -> bool:
        if self.nodes.changes == before:
            return False
        self.region = cluster_region_of([node.region for node in self.nodes.values()])
        return True

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass
class ClusterCache:
    """What geopin knows of the cluster: workloads, namespaces' labels, nodes."""

    workloads: ObjectCache[WorkloadRef, WorkloadView] = field(default_factory=ObjectCache)
    namespaces: ObjectCache[str, dict[str, str]] = field(default_factory=ObjectCache)
    nodes: NodeCache = field(default_factory=NodeCache)

    def view(self, ref: WorkloadRef) -> WorkloadView | None:
        return self.workloads.get(ref)

    def views(self) -> list[WorkloadView]:
        return self.workloads.values()

    def owner_of(self, pod: Mapping[str, Any], namespace: str) -> WorkloadView | None:
        """The workload whose pinned template a Pod was made from, if geopin knows it (no API call)."""
        for ref in owner_candidates(pod, namespace):
            view = self.workloads.get(ref)
            if view is not None and ANNOTATION_PINNED_REGION in view.annotations:
                return view
        return None

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return self.namespaces.get(namespace)

    def all_namespace_labels(self) -> dict[str, dict[str, str]]:
        return dict(self.namespaces.items())

    def region(self) -> str | None:
        """The cluster's region: the ``topology.kubernetes.io/region`` most nodes carry."""
        return self.nodes.region

    async def prime(self, kube: KubeAPI) -> None:
        """LIST nodes, namespaces and every workload kind once, before Kopf's watches start."""
        began = time.monotonic()
        async for item in kube.list_all("/api/v1/nodes"):
            meta = item["metadata"]
            self.nodes.upsert(meta["name"], meta.get("resourceVersion"), node_info(item))
        async for item in kube.list_all("/api/v1/namespaces"):
            meta = item["metadata"]
            self.namespaces.upsert(meta["name"], meta.get("resourceVersion"), dict(meta.get("labels") or {}))
        for name in PATCH_KINDS:
            kind = KINDS[name]
            prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
            async for item in kube.list_all(f"{prefix}/{kind.plural}"):
                if tracked(kind, item):
                    self.upsert_workload(view_of(kind, item), item["metadata"].get("resourceVersion"))
        logger.info(
            "cache primed in %.1fs: %d workloads, %d namespaces, %d nodes",
            time.monotonic() - began,
            len(self.workloads),
            len(self.namespaces),
            len(self.nodes),
        )

    def upsert_workload(self, view: WorkloadView, resource_version: str | None) -> None:
        self.workloads.upsert(view.ref, resource_version, view)
