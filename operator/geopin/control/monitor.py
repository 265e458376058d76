"""The probe loop of one policy: probe every replica on its own schedule, feed the state machine.

One task per policy plus a few in-flight probes per replica, so a hung replica (its probes wait out
``timeoutSeconds``) never delays the probes of the others. A suspect replica (one that just failed,
or whose probe has been unanswered for a second) is re-probed about every second, without waiting for
the previous probe to time out, until the failure threshold decides: a hang is detected as fast as a
refused connection. Whenever the set of replicas workloads may use changes, the listener hears it
at once and the reconciler repoints. The loop sleeps until the next probe is due, a probe answers, a
replica's failback delay ends, or something asks for a probe now.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from geopin.control.changes import wait_for_event
from geopin.core.health import (
    QUICK_REPROBE_SECONDS,
    HealthTracker,
    ReplicaState,
    Transition,
    held_regions,
    hold_ends,
)
from geopin.core.policy import with_discovered
from geopin.io import metrics
from geopin.io.images import ImageCache
from geopin.io.probes import Outcome, ProbeResult

if TYPE_CHECKING:
    from geopin.core.policy import Policy
    from geopin.io.azure import ArmDiscovery, DiscoveredReplica, DiscoveryResult
    from geopin.io.probes import RegistryClient

__all__ = ["MonitorListener", "PolicyMonitor"]

logger = logging.getLogger(__name__)

IDLE_WAKE_SECONDS = 60.0  # nothing due: look again anyway


class MonitorListener(Protocol):
    def usable_changed(self, policy: str) -> None:
        """The replicas the policy's workloads may use changed (a verdict, a failback, an exclusion)."""

    def transition(self, policy: str, transition: Transition) -> None:
        """A replica changed state."""


def wall_time(monotonic_time: float) -> float:
    """A monotonic timestamp as wall-clock seconds, for status and Events."""
    return monotonic_time + (time.time() - time.monotonic())


class PolicyMonitor:
    def __init__(
        self,
        policy: Policy,
        client: RegistryClient,
        listener: MonitorListener,
        *,
        clock: Callable[[], float] = time.monotonic,
        discovery: ArmDiscovery | None = None,
    ) -> None:
        self.spec_policy = policy
        self.discovery = discovery
        self.discovered: tuple[DiscoveredReplica, ...] = ()
        self.arm_error: str | None = None
        self._discovered_once = discovery is None  # with ARM discovery, nothing is decided before it answers
        self.policy = policy
        self.client = client
        self.listener = listener
        self.clock = clock
        self.tracker = HealthTracker(policy.probe, policy.replicas)
        self.usable: frozenset[str] | None = None  # None until every replica has a verdict
        # region → when it stopped being usable (this process's clock); the start of a Redirect hold
        self.unusable_since: dict[str, float] = {}
        self.held: frozenset[str] = frozenset()  # unusable replicas whose templates keep their pin
        self._restored_since: dict[str, float] = {}  # the last status's unusable_since, for a restart
        self.images = ImageCache()
        self._due: dict[str, float] = {}
        self._launched: dict[str, float] = {}
        self._inflight: dict[str, dict[asyncio.Task[None], float]] = {}  # region → probe task → start time
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._discovery_task: asyncio.Task[None] | None = None

    def effective(self, policy: Policy) -> Policy:
        """``policy`` plus the replicas ARM discovered."""
        return with_discovered(policy, [(r.region, r.endpoint) for r in self.discovered])

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"geopin-probes-{self.policy.name}")
        if self.discovery is not None:
            self._discovery_task = asyncio.create_task(self._discover(), name=f"geopin-arm-{self.policy.name}")

    async def stop(self) -> None:
        probes = [task for inflight in self._inflight.values() for task in inflight]
        tasks = [t for t in (self._task, self._discovery_task, *probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()

    def update(self, policy: Policy, client: RegistryClient | None = None) -> RegistryClient | None:
        """A new spec: keep the health of known regions. Returns the client to close, if replaced."""
        self.spec_policy = policy
        self.policy = self.effective(policy)
        self.tracker.update_replicas(self.policy.replicas, policy.probe)
        old = None
        if client is not None:
            old, self.client = self.client, client
        self._recompute()
        self._wake.set()
        return old

    def restore(self, status: Mapping[str, Any]) -> None:
        """Failback delays and Redirect holds under way when the last status was written (a restart, a
        new leader)."""
        now, wall_now = self.clock(), time.time()
        self.tracker.restore_failback_delays(status, now, wall_now)
        self._restored_since = self.tracker.unusable_since_in(status, now, wall_now)

    def trigger(self, region: str) -> None:
        """Probe this replica now (a passive signal such as a kubelet pull error)."""
        if region in self.tracker.replicas:
            self._due[region] = 0.0
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            for region in list(self.tracker.replicas):
                if self._probe_at(region, now) <= now:
                    task = asyncio.create_task(self._probe(region), name=f"geopin-probe-{region}")
                    self._inflight.setdefault(region, {})[task] = now
                    self._launched[region] = now
            self._recompute()
            await wait_for_event(self._wake, self._next_wake(self.clock()) - self.clock())

    def _probe_at(self, region: str, now: float) -> float:
        """When the next probe of ``region`` may start (``inf``: not before a probe in flight answers)."""
        inflight = self._inflight.get(region) or {}
        if not inflight:
            return self._due.get(region, 0.0)
        health = self.tracker.replicas[region]
        if health.state is ReplicaState.UNHEALTHY or len(inflight) >= self.tracker.settings.failure_threshold:
            return float("inf")  # decided, or enough probes overlap: wait for an answer
        # Suspect (it just failed, or a probe has gone unanswered for a second, which the latest launch
        # being a second old implies): re-probe about every second until the threshold decides.
        return self._launched.get(region, 0.0) + QUICK_REPROBE_SECONDS

    def _next_wake(self, now: float) -> float:
        """The earliest of: a probe due, a healthy replica's failback delay ending."""
        times = [self._probe_at(region, now) for region in self.tracker.replicas]
        times += [h.usable_at for h in self.tracker.replicas.values() if h.usable_at > now]
        times += [end for end in hold_ends(self.unusable_since, self.policy.failover) if end > now]
        return min([now + IDLE_WAKE_SECONDS, *times])

    async def _probe(self, region: str) -> None:
        started = self.clock()
        try:
            health = self.tracker.replicas.get(region)
            if health is None:
                return
            result: ProbeResult = await self.client.probe(health.endpoint, self.policy.probe.canary_image)
            self.record(region, result)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Not registry trouble the client could classify, but a failed probe all the same: without
            # an observation the replica's state would freeze. The stack is logged, never the
            # exception's text, which may quote a request header and so a credential.
            name = type(error).__name__
            stack = "".join(traceback.format_tb(error.__traceback__))
            logger.error("probing %s of policy %s failed unexpectedly (%s):\n%s", region, self.policy.name, name, stack)
            if region in self.tracker.replicas:
                latency = max(self.clock() - started, 0.0)
                self.record(region, ProbeResult(Outcome.CONNECT, None, latency, f"probe failed unexpectedly ({name})"))
        finally:
            current = asyncio.current_task()
            inflight = self._inflight.get(region, {})
            if current is not None:
                inflight.pop(current, None)
            if region in self.tracker.replicas:
                self._due[region] = self._launched.get(region, 0.0) + self.tracker.next_probe_in(region)
            self._wake.set()

    def record(self, region: str, result: ProbeResult) -> None:
        """One probe's answer: metrics, the state machine, and the listener when something changed."""
        policy = self.policy
        outcome = str(result.outcome)
        metrics.PROBE_DURATION.labels(policy.name, region, outcome).observe(result.latency_seconds)
        if outcome != "ok":
            metrics.PROBE_FAILURES.labels(policy.name, region, outcome).inc()
        transition = self.tracker.observe(region, outcome, self.clock(), result.latency_seconds, result.message)
        health = self.tracker.replicas[region]
        metrics.REPLICA_HEALTHY.labels(policy.name, policy.registry, region).set(
            1 if health.reported_state is ReplicaState.HEALTHY else 0
        )
        if transition is not None:
            logger.info(
                "policy %s: replica %s %s -> %s (%s)",
                policy.name,
                region,
                transition.previous,
                transition.current,
                transition.message,
            )
            self.listener.transition(policy.name, transition)
        self._recompute()

    def set_excluded(self, region: str, excluded: bool) -> None:
        transition = self.tracker.set_excluded(region, excluded, self.clock())
        if transition is not None:
            self.listener.transition(self.policy.name, transition)
        self._recompute()

    async def _discover(self) -> None:
        discovery, azure = self.discovery, self.spec_policy.azure
        if discovery is None or azure is None:
            return
        while True:
            self.apply_discovery(await discovery.refresh())
            await asyncio.sleep(azure.refresh_seconds)

    def apply_discovery(self, result: DiscoveryResult) -> None:
        """ARM's answer: the replica list (the last known one when ARM failed) and who is excluded."""
        self.discovered = result.replicas
        self.arm_error = None if result.fresh else (result.error or "ARM refresh failed")
        self._discovered_once = True
        self.policy = self.effective(self.spec_policy)
        self.tracker.update_replicas(self.policy.replicas)
        for replica in result.replicas:
            self.set_excluded(replica.region, replica.excluded)
        self._recompute()
        self.listener.usable_changed(self.policy.name)  # the replica list may have changed too
        self._wake.set()

    def _recompute(self) -> None:
        now = self.clock()
        decided = self.tracker.decided and self._discovered_once
        usable = self.tracker.usable(now) if decided else None
        if usable is not None:
            listed = set(self.tracker.replicas)
            for region in listed - usable:
                self.unusable_since.setdefault(region, min(now, self._restored_since.get(region, now)))
            for region in [r for r in self.unusable_since if r in usable or r not in listed]:
                del self.unusable_since[region]
            self._restored_since.clear()  # a hint for the first verdict only
        held = held_regions(self.unusable_since, now, self.policy.failover)
        if usable != self.usable or held != self.held:
            self.usable, self.held = usable, held
            self.listener.usable_changed(self.policy.name)
