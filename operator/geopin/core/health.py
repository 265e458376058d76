"""Which endpoint a workload's images should point to, given the replicas it may use.

Pure: the caller supplies the set of replicas workloads may use (``HealthTracker.usable``).
The order of preference is: the workload's own ``geopin.io/region`` (if it is a listed replica), the
cluster's home region (if listed), then the other replicas in ``spec.replicas`` order; with none
usable, the global endpoint (``fallback: Global``) or the current pin (``fallback: Stay``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from geopin.core.policy import GLOBAL_REGION, FailoverSettings, Fallback, Policy, ProbeSettings, Replica, Strategy

__all__ = [
    "HealthTracker",
    "ReplicaHealth",
    "ReplicaState",
    "Target",
    "Transition",
    "choose",
    "held_regions",
    "hold_ends",
    "preference_order",
]

# After a first failure (or a first success while unhealthy), re-probe about this often until the
# threshold decides, instead of waiting whole intervals: fast detection without a jumpy verdict.
QUICK_REPROBE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where images point: a replica region and its host, or ``global`` and the global login server."""

    region: str
    endpoint: str

    @property
    def is_global(self) -> bool:
        return self.region == GLOBAL_REGION


def preference_order(policy: Policy, cluster_region: str | None, preferred: str | None = None) -> list[str]:
    """Replica regions from most to least preferred for one workload."""
    listed = [r.region for r in policy.replicas]
    order: list[str] = []
    for region in (preferred, cluster_region):
        if region in listed and region not in order:
            order.append(region)
    order.extend(r for r in listed if r not in order)
    return order


def choose(
    policy: Policy,
    cluster_region: str | None,
    usable: Collection[str],
    preferred: str | None = None,
    current: str | None = None,
) -> Target:
    """The target for one workload: a usable replica, else the fallback.

    Only ``fallback: Stay`` ever returns a replica outside ``usable``: the pin the user asked to keep.
    """
    for region in preference_order(policy, cluster_region, preferred):
        if region in usable:
            return Target(region, policy.endpoints[region])
    if policy.fallback is Fallback.STAY and current is not None and current in policy.endpoints:
        return Target(current, policy.endpoints[current])
    return Target(GLOBAL_REGION, policy.registry)


def held_regions(unusable_since: Mapping[str, float], now: float, failover: FailoverSettings) -> frozenset[str]:
    """Unusable replicas whose pinned templates stay where they are (``strategy: Redirect``): those
    unusable for less than ``repointAfterSeconds`` (every one with 0). Their new Pods are redirected."""
    if failover.strategy is not Strategy.REDIRECT:
        return frozenset()
    after = failover.repoint_after_seconds
    return frozenset(r for r, since in unusable_since.items() if after == 0 or now - since < after)


def hold_ends(unusable_since: Mapping[str, float], failover: FailoverSettings) -> list[float]:
    """When each hold ends (templates then follow): a time to wake up at."""
    if failover.strategy is not Strategy.REDIRECT or failover.repoint_after_seconds == 0:
        return []
    return [since + failover.repoint_after_seconds for since in unusable_since.values()]


def _wall_seconds(stamp: object) -> float | None:
    """An RFC 3339 time of the status (``2026-11-28T03:09:40Z``) as wall-clock seconds, or None."""
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


class ReplicaState(enum.StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"
    EXCLUDED = "Excluded"


# Probe outcomes (probes.Outcome values) that say "this replica can serve pulls".
_UP = frozenset({"ok"})
_THROTTLED = "throttled"


@dataclass(slots=True)
class ReplicaHealth:
    """One replica's health as the state machine sees it. Times are seconds on the injected clock."""

    region: str
    endpoint: str
    state: ReplicaState = ReplicaState.UNKNOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_probe_time: float | None = None
    last_transition_time: float | None = None
    latency_seconds: float = 0.0
    last_outcome: str = ""
    message: str = "not probed yet"
    excluded: bool = False  # taken out of global routing in ARM (regionEndpointEnabled: false)
    usable_at: float = 0.0  # workloads may move (back) to it from this time on

    @property
    def reported_state(self) -> ReplicaState:
        return ReplicaState.EXCLUDED if self.excluded else self.state


@dataclass(frozen=True, slots=True)
class Transition:
    region: str
    previous: ReplicaState
    current: ReplicaState
    message: str


class HealthTracker:
    """The per-replica state machine of one policy (pure; the caller passes the clock's ``now``).

    - ``failureThreshold`` consecutive failures make a replica Unhealthy; ``successThreshold``
      consecutive successes make it Healthy again. An Unknown replica (just started, or just listed)
      is Healthy after its first success, so a restart does not wait to trust a working replica.
    - A 429 is reported but not counted unless ``throttlingIsFailure`` (as ACR's own failover does): it
      gives an Unknown replica its first verdict (it answers), and otherwise neither interrupts a run of
      failures nor counts towards a recovery, so failures between 429s still make a replica Unhealthy.
    - An Excluded replica is still probed, but its changes underneath are not transitions: what is
      reported (and announced) stays Excluded until ARM includes it again.
    - A replica that recovers, or comes back from ARM exclusion, is *usable* for workloads only after
      ``failbackDelaySeconds`` of uninterrupted health: a flapping replica attracts nothing back.
    """

    def __init__(self, settings: ProbeSettings, replicas: Iterable[Replica]) -> None:
        self.settings = settings
        self.replicas: dict[str, ReplicaHealth] = {}
        self.update_replicas(replicas)

    def update_replicas(self, replicas: Iterable[Replica], settings: ProbeSettings | None = None) -> None:
        """A new replica list (spec edit, ARM discovery): known regions keep their state."""
        if settings is not None:
            self.settings = settings
        previous = self.replicas
        self.replicas = {}
        for replica in replicas:
            health = previous.get(replica.region)
            if health is None or health.endpoint != replica.endpoint:
                health = ReplicaHealth(region=replica.region, endpoint=replica.endpoint)
            self.replicas[replica.region] = health

    def restore_failback_delays(self, status: Mapping[str, Any], now: float, wall_now: float) -> None:
        """Carry a failback delay under way over a restart or a change of leader, from the status geopin wrote.

        A new process starts every replica Unknown, usable at its first success, so a recovered home
        replica would attract workloads back before ``failbackDelaySeconds``. A row the status shows
        Healthy but missing from ``usableRegions`` was waiting out that delay, which ends
        ``failbackDelaySeconds`` after the row's ``lastTransitionTime`` (its recovery): the replica
        stays Unknown until probed, and is usable no earlier than that. Nothing else is read: an
        Unhealthy row may be stale (the status lags a repoint), and starting that replica Unhealthy
        would move workloads off a replica the last leader had already moved them back to.
        ``now`` is this tracker's clock and ``wall_now`` the wall clock at the same instant.
        """
        for health, changed in self._unusable_rows(status, ReplicaState.HEALTHY, now, wall_now):
            health.usable_at = max(health.usable_at, changed + self.settings.failback_delay_seconds)

    def unusable_since_in(self, status: Mapping[str, Any], now: float, wall_now: float) -> dict[str, float]:
        """When each replica the status shows Unhealthy became so (its row's ``lastTransitionTime``), on
        this tracker's clock: a restart or a new leader resumes a Redirect hold (``repointAfterSeconds``)
        instead of starting it again, which would keep templates on a dead replica for longer.

        Only a hint: the caller uses it if its own probes find the replica unusable too. A stale row can
        only make the hold end early by the status's lag (seconds), never pin anything to a dead replica.
        """
        rows = self._unusable_rows(status, ReplicaState.UNHEALTHY, now, wall_now)
        return {health.region: changed for health, changed in rows}

    def _unusable_rows(
        self, status: Mapping[str, Any], state: ReplicaState, now: float, wall_now: float
    ) -> list[tuple[ReplicaHealth, float]]:
        """The replicas the status shows in ``state`` and not usable, with when they changed to it (on
        this tracker's clock); rows of another endpoint than the one probed now, or unreadable, left out."""
        usable, rows = status.get("usableRegions"), status.get("replicas")
        if not isinstance(usable, list) or not isinstance(rows, list):
            return []
        found = []
        for row in rows:
            region = row.get("region") if isinstance(row, Mapping) else None
            health = self.replicas.get(region) if isinstance(region, str) else None
            if health is None or region in usable or row.get("state") != state:
                continue
            if row.get("endpoint") != health.endpoint:
                continue  # the status describes another endpoint than the one probed now
            if (changed := _wall_seconds(row.get("lastTransitionTime"))) is not None:
                found.append((health, now - (wall_now - changed)))
        return found

    def is_failure(self, outcome: str) -> bool:
        if outcome == _THROTTLED:
            return self.settings.throttling_is_failure
        return outcome not in _UP

    def observe(
        self, region: str, outcome: str, now: float, latency_seconds: float = 0.0, message: str = ""
    ) -> Transition | None:
        health = self.replicas.get(region)
        if health is None:
            return None
        health.last_probe_time = now
        health.latency_seconds = latency_seconds
        health.last_outcome = outcome
        health.message = message or outcome
        previous = health.state
        if outcome == _THROTTLED and not self.settings.throttling_is_failure:
            if previous is ReplicaState.UNKNOWN:
                health.state = ReplicaState.HEALTHY
                health.usable_at = max(health.usable_at, now)
        elif self.is_failure(outcome):
            health.consecutive_failures += 1
            health.consecutive_successes = 0
            if (
                previous is not ReplicaState.UNHEALTHY
                and health.consecutive_failures >= self.settings.failure_threshold
            ):
                health.state = ReplicaState.UNHEALTHY
        else:
            health.consecutive_successes += 1
            health.consecutive_failures = 0
            if previous is ReplicaState.UNKNOWN:
                health.state = ReplicaState.HEALTHY
                health.usable_at = max(health.usable_at, now)  # an ARM un-exclusion's delay still holds
            elif previous is ReplicaState.UNHEALTHY and health.consecutive_successes >= self.settings.success_threshold:
                health.state = ReplicaState.HEALTHY
                health.usable_at = now + self.settings.failback_delay_seconds
        if health.state is previous or health.excluded:
            return None
        health.last_transition_time = now
        return Transition(region, previous, health.state, health.message)

    def set_excluded(self, region: str, excluded: bool, now: float) -> Transition | None:
        health = self.replicas.get(region)
        if health is None or health.excluded == excluded:
            return None
        before = health.reported_state
        health.excluded = excluded
        health.last_transition_time = now
        if not excluded:
            health.usable_at = max(health.usable_at, now + self.settings.failback_delay_seconds)
        return Transition(
            region, before, health.reported_state, "excluded from global routing in ARM" if excluded else ""
        )

    @property
    def decided(self) -> bool:
        """Every replica has a verdict: decisions made before this would trust Unknown replicas."""
        return all(h.state is not ReplicaState.UNKNOWN or h.excluded for h in self.replicas.values())

    def usable(self, now: float) -> frozenset[str]:
        """The replicas workloads may point to now."""
        return frozenset(
            h.region
            for h in self.replicas.values()
            if h.state is ReplicaState.HEALTHY and not h.excluded and h.usable_at <= now
        )

    def next_probe_in(self, region: str) -> float:
        """Seconds until the next probe: a suspect replica is re-probed quickly until the threshold decides."""
        health = self.replicas[region]
        interval = float(self.settings.interval_seconds)
        suspect = health.consecutive_failures > 0 and health.state is not ReplicaState.UNHEALTHY
        recovering = health.consecutive_successes > 0 and health.state is ReplicaState.UNHEALTHY
        if health.state is ReplicaState.UNKNOWN or suspect or recovering:
            return min(QUICK_REPROBE_SECONDS, interval)
        return interval
