"""Rescue (``rescuePods``): a Pod stuck pulling from an unusable replica is fixed in place, same UID.

The signal is the kubelet's own pull failure Event (already watched for passive probing). A failure
can come before geopin has judged the replica unusable, so the Pods that failed lately are kept (a
bounded, oldest-out memory) and looked at again whenever a policy's usable replicas change. That also
covers Pods created while geopin was down (the webhook failed open): their Events are listed at start.

A few workers (never a task per Pod) read the Pod, take only the containers waiting on a pull
(``ErrImagePull``, ``ImagePullBackOff``; never a running one), decide with ``core.redirect`` and send
one guarded patch. Only the leader rescues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from geopin.control.book import PolicyBook
from geopin.control.notices import object_ref
from geopin.core.policy import Mode
from geopin.core.redirect import move_pod
from geopin.core.text import one_line
from geopin.core.workloads import KINDS, view_of
from geopin.io import metrics
from geopin.io.cache import ClusterCache
from geopin.io.event_backlog import EventBacklog
from geopin.io.kube import CALL_FAILURES, ApiError, KubeAPI, NotLeading

__all__ = ["PodRescuer", "waiting_on_pull"]

logger = logging.getLogger(__name__)

POD = KINDS["Pod"]
PULL_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
REMEMBERED_PODS = 10_000  # Pods that failed to pull lately, looked at again when replicas change
REMEMBER_SECONDS = 900.0


def waiting_on_pull(pod: Mapping[str, Any]) -> frozenset[str]:
    """Keys (``containers/app``, ``initContainers/migrate``) of the containers waiting on an image pull."""
    status = pod.get("status") or {}
    keys = set()
    for field, list_name in (("initContainerStatuses", "initContainers"), ("containerStatuses", "containers")):
        for container in status.get(field) or []:
            waiting = ((container or {}).get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PULL_WAITING_REASONS:
                keys.add(f"{list_name}/{container.get('name')}")
    return frozenset(keys)


class PodRescuer:
    def __init__(
        self,
        kube: KubeAPI,
        book: PolicyBook,
        cluster: ClusterCache,
        events: EventBacklog,
        *,
        workers: int = 4,
    ) -> None:
        self.kube = kube
        self.book = book
        self.cluster = cluster
        self.events = events
        self.workers = workers
        self._recent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._forbidden_said = False

    def pull_failed(self, namespace: str, name: str) -> None:
        """The kubelet could not pull an image for this Pod: remember it, and look at it now."""
        key = (namespace, name)
        self._recent[key] = time.monotonic()
        self._recent.move_to_end(key)
        while len(self._recent) > REMEMBERED_PODS:
            self._recent.popitem(last=False)
        self._enqueue(key)

    def replicas_changed(self) -> None:
        """A policy's usable replicas changed: Pods that failed lately may now be geopin's to fix."""
        horizon = time.monotonic() - REMEMBER_SECONDS
        while self._recent and next(iter(self._recent.values())) < horizon:
            self._recent.popitem(last=False)
        for key in self._recent:
            self._enqueue(key)

    def _enqueue(self, key: tuple[str, str]) -> None:
        if self._tasks and key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"geopin-rescue-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = asyncio.Queue()
        self._queued.clear()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            try:
                await self.rescue(*key)
            except asyncio.CancelledError:
                raise
            except CALL_FAILURES as e:
                logger.warning("rescuing Pod %s/%s failed; the next Pod event retries it: %s", *key, one_line(e))
            except Exception:
                logger.exception("rescuing Pod %s/%s failed", *key)

    def _refused(self, error: ApiError) -> None:
        """A 403 means the RBAC lacks Pods: said once, clearly."""
        if error.status == 403 and not self._forbidden_said:
            self._forbidden_said = True
            logger.error("rescuing Pods needs get and patch on pods (the chart's rbac.rescuePods): %s", error)

    async def rescue(self, namespace: str, name: str) -> bool:
        """Read the Pod and move its containers waiting on a pull, if geopin's decision says so."""
        snapshots = self.book.snapshots()
        if not any(s.policy.mode is Mode.PATCH and s.policy.failover.rescue_pods for s in snapshots):
            return False
        try:
            pod = await self.kube.get(POD, namespace, name)
        except ApiError as e:
            self._refused(e)
            return False
        if pod is None:
            self._recent.pop((namespace, name), None)
            return False
        waiting = waiting_on_pull(pod)
        if not waiting:
            return False
        owner = self.cluster.owner_of(pod, namespace)
        labels = self.cluster.namespace_labels(namespace)
        move = move_pod(pod, namespace, owner, snapshots, labels, admission=False, containers=waiting)
        if move is None:
            return False
        try:
            outcome = await self.kube.patch(POD, namespace, name, move.patch)
        except NotLeading:
            return False
        except ApiError as e:
            if e.status != 403:
                logger.warning("rescuing Pod %s/%s: the patch failed: %s", namespace, name, e)
            self._refused(e)
            return False
        if outcome.result != "applied":
            return False  # changed meanwhile (a conflict) or gone: the next pull failure looks again
        self._recent.pop((namespace, name), None)
        metrics.PODS_RESCUED.labels(move.policy, move.from_region, move.to_region).inc()
        keys = ", ".join(sorted(waiting))
        logger.info("policy %s: Pod %s/%s rescued in place: %s -> %s (%s)", move.policy, namespace, name,
                    move.from_region, move.to_region, keys)  # fmt: skip
        self.events.add(
            object_ref(view_of(POD, pod)),
            "Normal",
            "PodRescued",
            f"policy {move.policy}: {keys} waited on a pull from {move.from_region}, which is unusable; "
            f"image set to {move.to_region} in place (same Pod, no restart of running containers)",
        )
        return True
