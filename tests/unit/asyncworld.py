"""Shared scenery for unit tests of the async layer: workloads, policies and a reconciler on a FakeKube."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from geopin.control.book import EveryListedReplica, PolicyBook, PolicyEntry
from geopin.control.changes import Changes
from geopin.control.notices import WorkloadNotices
from geopin.control.reconciler import Reconciler
from geopin.core.policy import Policy, from_spec
from geopin.core.workloads import KINDS, WorkloadRef, view_of
from geopin.io.cache import ClusterCache
from geopin.io.event_backlog import EventBacklog
from tests.unit.fakekube import FakeKube, workload_path

REGISTRY = "contoso.azurecr.io"
EAST = "contoso.eastus.geo.azurecr.io"
WEST = "contoso.westus.geo.azurecr.io"
DEPLOYMENT = KINDS["Deployment"]


def policy(name: str = "contoso", registry: str = REGISTRY, **spec: Any) -> Policy:
    return from_spec(
        name,
        {"registry": registry, "region": "eastus", "replicas": [{"region": "eastus"}, {"region": "westus"}], **spec},
    )


def entry(p: Policy, created: str = "2026-01-01T00:00:00Z") -> PolicyEntry:
    return PolicyEntry(name=p.name, uid=f"uid-{p.name}", created=created, generation=1, policy=p)


def deployment(name: str, image: str, namespace: str = "apps") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
    }


def image(kube: FakeKube, name: str, namespace: str = "apps") -> str:
    body = kube.objects[workload_path(DEPLOYMENT, namespace, name)]
    return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def ref(name: str, namespace: str = "apps") -> WorkloadRef:
    return ("Deployment", namespace, name)


def cache_of(kube: FakeKube) -> ClusterCache:
    """The cluster as geopin's watches would have it now."""
    cluster = ClusterCache()
    for body in kube.objects.values():
        if body.get("kind") in KINDS:
            cluster.upsert_workload(view_of(KINDS[body["kind"]], body), body["metadata"]["resourceVersion"])
    return cluster


def reconciler(kube: FakeKube, *policies: Policy) -> Reconciler:
    """A reconciler over every workload in ``kube``, every listed replica usable, no registry lookups."""
    cluster = cache_of(kube)
    book = PolicyBook(EveryListedReplica(), cluster.region)
    for p in policies or (policy(),):
        book.upsert(entry(p))
    idle = asyncio.Event()
    notices = WorkloadNotices(EventBacklog(kube, idle))
    return Reconciler(kube, book, cluster, notices, Changes(), idle, workers=2, retry_delay=0.001)


def registry(up: Callable[[str], bool]) -> httpx.MockTransport:
    """Registry replicas answering ``GET /v2/`` with 200 while ``up(host)``, else 503."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if up(request.url.host) else 503)

    return httpx.MockTransport(answer)


async def eventually(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Let the event loop run until ``predicate()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)  # yields to the tasks under test; the deadline bounds the wait
