"""Leader election with a coordination.k8s.io/v1 Lease (client-go's algorithm, in asyncio).

Kopf has no leader election of its own (its peering pauses equal-priority peers instead), so geopin
runs one: every replica watches and indexes (warm for a take-over) and serves admission, but only
the holder of the Lease probes replicas and writes workloads and statuses.

- Acquire: create the Lease, or take it over when its holder has not renewed it for
  ``lease_duration`` as observed on *this* replica's clock (no cross-node clock comparison).
- Renew every ``renew_period``; a replica that cannot renew within ``lease_duration`` steps down
  before anyone else can take over, so two leaders never overlap by more than clock drift.
- Every write carries the Lease's resourceVersion: a concurrent candidate gets a 409 and backs off.
- Graceful shutdown releases the Lease (empty holder, 1 s duration) so a successor starts at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from geopin.io.kube import Kube

__all__ = ["LeaderElector"]

logger = logging.getLogger(__name__)


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str = "geopin",
        *,
        identity: str | None = None,
        lease_duration: float = 10.0,
        renew_period: float = 3.0,
        retry_period: float = 1.0,
        on_started_leading: Callable[[], Awaitable[None]],
        on_stopped_leading: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        # The Pod's name (the chart sets POD_NAME): with hostNetwork, HOSTNAME is the node's, shared by replicas.
        pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", "geopin")
        self.identity = identity or f"{pod}_{uuid.uuid4().hex[:8]}"
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self.leading = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="geopin-leader-election")

    async def stop(self) -> None:
        """Stop campaigning; release the Lease if held."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leading:
            await self._step_down()
            await self._release()

    async def _run(self) -> None:
        while True:
            try:
                held = await self._try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("leader election: %s", e)
                held = False
            now = self.clock()
            if held:
                self._renewed_at = now
                if not self.leading:
                    self.leading = True
                    logger.info("leader election: %s now leads (lease %s/%s)", self.identity, self.namespace, self.name)
                    await self.on_started_leading()
            elif self.leading and now - self._renewed_at >= self.lease_duration - self.retry_period:
                logger.warning("leader election: %s could not renew in time; stepping down", self.identity)
                await self._step_down()
            await asyncio.sleep(self.renew_period if self.leading else self.retry_period)  # the election's cadence

    async def _step_down(self) -> None:
        self.leading = False
        await self.on_stopped_leading()

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = _micro_time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        try:
            lease = await self.kube.request(self.path, "GET")
        except ApiException as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0, None),
            }
            try:
                await self.kube.request(self.path.rsplit("/", 1)[0], "POST", body)
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, str(spec.get("renewTime")))
        now = self.clock()
        if observed != self._observed:
            self._observed, self._observed_at = observed, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquire = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(transitions, acquire)
        try:
            await self.kube.request(self.path, "PUT", lease)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    async def _release(self) -> None:
        try:
            lease = await self.kube.request(self.path, "GET")
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
            await self.kube.request(self.path, "PUT", lease)
            logger.info("leader election: %s released the lease", self.identity)
        except Exception as e:
            logger.warning("leader election: could not release the lease: %s", e)
