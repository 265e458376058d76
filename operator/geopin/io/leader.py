"""Leader election with a coordination.k8s.io/v1 Lease (client-go's algorithm, in asyncio).

Kopf has no leader election of its own (its peering pauses equal-priority peers instead), so geopin
runs one: every replica watches and indexes (warm for a take-over) and serves admission, but only
the holder of the Lease probes replicas and writes workloads and statuses.

- Acquire: create the Lease, or take it over when its holder has not renewed it for
  ``lease_duration`` as observed on *this* replica's clock (no cross-node clock comparison).
- Renew every ``renew_period``. A renewal counts from the moment it was *sent*, and a replica that
  has not renewed for ``renew_deadline`` (``lease_duration - retry_period``) steps down, before
  anyone else can take over; a renewal attempt that outlasts the deadline is abandoned.
- :meth:`LeaderElector.holds` is that fence as a predicate: the API client asks it before every
  write, so a replica that stalled (a paused process, a starved event loop) writes nothing once it
  wakes, even before its election loop notices.
- The loop never dies: a failed API call, or an exception from the callbacks that start or stop
  leading, is logged; a failure to start leading steps down and releases the Lease.
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
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from geopin.core.timestamps import rfc3339

if TYPE_CHECKING:
    from geopin.io.kube import KubeAPI

__all__ = ["LeaderElector"]

logger = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


class LeaderElector:
    def __init__(
        self,
        kube: KubeAPI,
        namespace: str,
        name: str = "geopin",
        *,
        identity: str | None = None,
        lease_duration: float = 10.0,
        renew_period: float = 3.0,
        retry_period: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{os.environ.get('HOSTNAME', 'geopin')}_{uuid.uuid4().hex[:8]}"
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.retry_period = retry_period
        self.renew_deadline = lease_duration - retry_period
        self.clock = clock
        self.leading = False
        self._on_started: Callback = _nothing
        self._on_stopped: Callback = _nothing
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0  # when the last successful renewal was sent
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def holds(self) -> bool:
        """Does this replica surely hold the Lease now? (It leads and renewed within the deadline.)"""
        return self.leading and self.clock() - self._renewed_at < self.renew_deadline

    def start(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        """Campaign until :meth:`stop`, calling back when leadership begins and ends."""
        self._on_started, self._on_stopped = on_started_leading, on_stopped_leading
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
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("leader election: unexpected error; campaigning on")
            await asyncio.sleep(self.renew_period if self.leading else self.retry_period)

    async def _round(self) -> None:
        sent = self.clock()
        held = False
        try:
            if self.leading:
                async with asyncio.timeout(max(0.0, self._renewed_at + self.renew_deadline - sent)):
                    held = await self._try_acquire_or_renew()
            else:
                held = await self._try_acquire_or_renew()
        except TimeoutError:
            logger.warning("leader election: renewing the lease took past its deadline")
        except Exception as e:
            logger.warning("leader election: %s", e)
        if held:
            self._renewed_at = sent
            if not self.leading:
                await self._begin()
        elif self.leading and not self.holds():
            logger.warning("leader election: %s could not renew in time; stepping down", self.identity)
            await self._step_down()

    async def _begin(self) -> None:
        self.leading = True
        logger.info("leader election: %s now leads (lease %s/%s)", self.identity, self.namespace, self.name)
        try:
            await self._on_started()
        except Exception:
            logger.exception("leader election: %s could not start leading; stepping down", self.identity)
            await self._step_down()
            await self._release()

    async def _step_down(self) -> None:
        self.leading = False
        try:
            await self._on_stopped()
        except Exception:
            logger.exception("leader election: stopping what %s ran as the leader failed", self.identity)

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = rfc3339(micro=True)
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
            lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=rfc3339(micro=True))
            await self.kube.request(self.path, "PUT", lease)
            logger.info("leader election: %s released the lease", self.identity)
        except Exception as e:
            logger.warning("leader election: could not release the lease: %s", e)
