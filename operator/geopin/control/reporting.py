"""Policy status, Events and gauges: one loop for every policy, writing only what changed.

A pass recounts every policy from one resync: the reconciler queues whatever diverges once, then
each policy's status is computed from the same workload views. The loop sleeps until something
changed (a write, a verdict, a cluster change) or a resync is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geopin.control.admission_policies import MutatingPolicySync
from geopin.control.book import PolicyBook, PolicyEntry
from geopin.control.changes import Changes, wait_for_event
from geopin.control.monitor import PolicyMonitor, wall_time
from geopin.control.monitors import Monitors
from geopin.control.node_credentials import NodeCredentials
from geopin.control.reconciler import Reconciler
from geopin.core.conditions import Condition, conditions, degraded, differs, failed_over, failover_path
from geopin.core.decisions import PolicySnapshot
from geopin.core.health import Target, preference_order
from geopin.core.mutating_policy import redirect_for
from geopin.core.nodes import needs_node_credentials
from geopin.core.policy import GLOBAL_REGION, Mode, NodeImageCheck
from geopin.core.replication import replication_gaps
from geopin.core.status import WorkloadCounts, count_workloads
from geopin.core.text import one_line
from geopin.core.timestamps import rfc3339
from geopin.core.workloads import WorkloadView
from geopin.io import metrics
from geopin.io.cache import ClusterCache
from geopin.io.event_backlog import EventBacklog
from geopin.io.kube import CALL_FAILURES, KubeAPI, NotLeading

__all__ = ["ENFORCED", "PolicyGauges", "StatusReporter", "node_credentials_condition"]

logger = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0  # a full level-based pass even when nothing signalled a change
AWAITING_RESYNC_SECONDS = 5.0  # sooner while workloads wait for replication (absent manifests expire)
DEBOUNCE_SECONDS = 1.0  # a burst of changes makes one pass
BUSY_REPORT_SECONDS = 5.0
CONVERGING_AFTER_SECONDS = 15.0


class PolicyGauges:
    """The per-policy gauges, and the label sets each policy exported so that stale ones are removed."""

    def __init__(self) -> None:
        self._exported: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}

    def export(self, policy: str, registry: str, target: Target, counts: WorkloadCounts) -> None:
        wanted: list[tuple[Any, tuple[str, ...]]] = [
            (metrics.ACTIVE_REGION_INFO, (policy, registry, target.region, target.endpoint))
        ]
        wanted += [(metrics.PINNED_WORKLOADS, (policy, r)) for r in counts.by_region]
        wanted += [(metrics.REPLICATION_PENDING, (policy, r)) for r in counts.awaiting_by_region]
        for metric, labels in self._exported.get(policy, []):
            if (metric, labels) not in wanted:
                metric.remove(*labels)
        self._exported[policy] = wanted
        metrics.ACTIVE_REGION_INFO.labels(policy, registry, target.region, target.endpoint).set(1)
        for region, count in counts.by_region.items():
            metrics.PINNED_WORKLOADS.labels(policy, region).set(count)
        for region, count in counts.awaiting_by_region.items():
            metrics.REPLICATION_PENDING.labels(policy, region).set(count)

    def forget(self, policy: str) -> None:
        for metric, labels in self._exported.pop(policy, []):
            metric.remove(*labels)


@dataclass(frozen=True, slots=True)
class Workers:
    """What the reconciler was doing when a pass began."""

    queued: int  # workloads this pass found diverging
    idle: bool
    busy_for: float


class StatusReporter:
    """One loop for every policy: recount and re-report after a change, and resync every minute.
    A status is patched only when it differs from the last one written."""

    def __init__(
        self,
        kube: KubeAPI,
        book: PolicyBook,
        cluster: ClusterCache,
        reconciler: Reconciler,
        monitors: Monitors,
        changes: Changes,
        events: EventBacklog,
        gauges: PolicyGauges,
        mutating_policies: MutatingPolicySync | None = None,
        node_credentials: NodeCredentials | None = None,
    ) -> None:
        self.kube = kube
        self.book = book
        self.cluster = cluster
        self.reconciler = reconciler
        self.monitors = monitors
        self.changes = changes
        self.events = events
        self.gauges = gauges
        self.mutating_policies = mutating_policies
        self.node_credentials = node_credentials
        self.written: dict[str, dict[str, Any]] = {}  # policy uid → last status written (or read)
        self.active: dict[str, str] = {}  # policy uid → active region as last decided
        self.switches: dict[str, dict[str, str]] = {}  # policy uid → lastSwitch, from the decision

    def decided(self, entry: PolicyEntry) -> None:
        """Count and announce a move of the policy's active endpoint when it is decided (api.md), not
        once the repoint it causes has settled. Called when the usable replicas change, and on every
        pass for what else moves it (a spec edit, the cluster's region)."""
        snapshot = None if entry.deleting else self.book.snapshot(entry)
        if snapshot is None or entry.policy is None:
            return
        target = snapshot.home()
        last = self.written.get(entry.uid, entry.observed_status)
        previous = self.active.get(entry.uid, last.get("activeRegion"))
        self.active[entry.uid] = target.region
        if previous is None or previous == target.region:
            return
        reason = _switch_reason(previous, target, snapshot, self.monitors.loops.get(entry.name), last)
        self.switches[entry.uid] = {"from": previous, "to": target.region, "reason": reason, "time": rfc3339()}
        metrics.ENDPOINT_SWITCHES.labels(entry.name, entry.policy.registry, previous, target.region, reason).inc()
        message = f"{previous} -> {target.region} ({target.endpoint}): {reason}"
        self.events.add(entry.involved(), "Normal", "EndpointSwitched", message, urgent=True)

    async def run(self) -> None:
        self.written.clear()  # a new term: start from the statuses as read (another leader may have written)
        while True:
            await self.report_all()
            await self._next_pass()

    async def _next_pass(self) -> None:
        """Sleep until a change (then let a burst settle, and the workers finish a while) or a resync."""
        waiting = any(s.get("workloads", {}).get("awaitingReplication") for s in self.written.values())
        if await wait_for_event(self.changes.status, AWAITING_RESYNC_SECONDS if waiting else RESYNC_SECONDS):
            await asyncio.sleep(DEBOUNCE_SECONDS)  # a rate limit: one pass per burst of changes
            if not self.reconciler.idle:
                # While workers are repointing, a pass (every workload re-planned and recounted) would take
                # the CPU they need: report every few seconds then, not after every write.
                await self.reconciler.wait_idle(BUSY_REPORT_SECONDS - DEBOUNCE_SECONDS)
        self.changes.status.clear()

    async def report_all(self) -> None:
        """One pass: retry failed probe starts, refresh stale registry answers and pull secret keys, one resync,
        every status."""
        entries = [e for e in self.book.entries.values() if not e.deleting]
        for entry in entries:
            self.decided(entry)
        await self.monitors.retry_failed(entries)
        if any(s.get("workloads", {}).get("awaitingReplication") for s in self.written.values()):
            await self.monitors.refresh_images()
        if self.node_credentials is not None:
            # nodeImageCheck: Enforce: a key added to (or removed from) a pull secret moves its workloads
            # through this pass's resync.
            await self.node_credentials.refresh()
        views = self.cluster.views()
        # The workers' state before this pass queues anything: work that this pass itself finds (one
        # workload whose write keeps failing) must not pass for a repoint under way.
        idle, busy_for = self.reconciler.idle, self.reconciler.busy_for
        workers = Workers(self.reconciler.enqueue_if_needed(views), idle, busy_for)
        labels = self.cluster.all_namespace_labels()
        for entry in entries:
            try:
                await self.report(entry, views, labels, workers)
            except NotLeading:
                return  # stepping down: the next leader reports
            except CALL_FAILURES as e:
                logger.warning(
                    "reporting the status of policy %s failed; retrying on the next pass: %s", entry.name, one_line(e)
                )
            except Exception:
                logger.exception("reporting the status of policy %s failed; retrying on the next pass", entry.name)

    async def report(
        self,
        entry: PolicyEntry,
        views: Sequence[WorkloadView],
        labels: Mapping[str, Mapping[str, str]],
        workers: Workers,
    ) -> None:
        last = self.written.setdefault(entry.uid, dict(entry.observed_status))
        # Settling (a restart's lookups, a repoint under way): report the outcome, not the transit,
        # and do not spend the workers' CPU on recounting every workload meanwhile. Only the
        # MutatingAdmissionPolicy params need the verdict at once.
        settling = bool(last) and not workers.idle and workers.busy_for < CONVERGING_AFTER_SECONDS
        if settling and self.mutating_policies is None:
            return
        status = self.compute(entry, views, labels, workers, last)
        await self._sync_mutating_policy(entry, status)
        if settling:
            return
        if differs(status, last):
            await self.kube.patch_policy_status(entry.name, status)
            self.written[entry.uid] = status

    async def _sync_mutating_policy(self, entry: PolicyEntry, status: Mapping[str, Any]) -> None:
        """Admission mode through MutatingAdmissionPolicy: its params follow the active endpoint."""
        sync = self.mutating_policies
        if sync is None or entry.policy is None or "activeRegion" not in status:
            return
        valid = not entry.error and not entry.conflict_with
        target = Target(status["activeRegion"], status["activeEndpoint"])
        policy = self.monitors.effective(entry.name, entry.policy)
        if entry.policy.mode is Mode.ADMISSION and valid:
            await sync.sync(policy, target)
        elif sync.applied(entry.name):
            await sync.remove(entry.policy)
        if self.book.redirects(entry.policy) and valid:
            await sync.sync_redirect(policy, redirect_for(policy, status.get("usableRegions") or (), target))
        elif sync.redirect_applied(entry.name):
            await sync.remove_redirect(entry.policy)

    def compute(
        self,
        entry: PolicyEntry,
        views: Sequence[WorkloadView],
        labels: Mapping[str, Mapping[str, str]],
        workers: Workers,
        last: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The policy's status now; ``lastSwitch`` is the move last decided (``decided``)."""
        monitor = self.monitors.loops.get(entry.name)
        held = self._held(entry, monitor, last)
        if held is not None:
            return held
        snapshot = self.book.snapshot(entry)
        assert snapshot is not None  # _held covers every case without one
        assert entry.policy is not None
        target = snapshot.home()
        counts = count_workloads(views, snapshot, labels)
        replicas = replicas_status(monitor, snapshot, last.get("replicas"))
        healthy = sum(r["state"] == "Healthy" for r in replicas)
        status: dict[str, Any] = {
            "observedGeneration": entry.generation,
            "clusterRegion": snapshot.cluster_region or "",
            "activeRegion": target.region,
            "activeEndpoint": target.endpoint,
            "healthySummary": f"{healthy}/{len(replicas)}",
            "usableRegions": sorted(snapshot.usable),  # what every replica's admission webhook uses
            "replicas": replicas,
            "workloads": counts.as_status(),
        }
        if entry.policy.replication_check and monitor is not None:
            status["replicationGaps"] = replication_gaps(monitor.images.absent())  # for the standbys' admission
        if (switched := self.switches.get(entry.uid) or last.get("lastSwitch")) is not None:
            status["lastSwitch"] = switched
        ready = self._ready(entry, snapshot, target, counts, workers)
        items = [ready, degraded(replicas), failed_over(snapshot, target)]
        if snapshot.policy.azure is not None and monitor is not None:
            items.append(_control_plane(monitor))
        node_credentials = node_credentials_condition(self.book, snapshot)
        if node_credentials is not None:
            items.append((NODE_CREDENTIALS, *node_credentials))
        if snapshot.policy.mode is Mode.PATCH:
            items.append(failover_path(snapshot, self.book.no_redirect_path, self.book.redirect_path))
        status["conditions"] = conditions(last, entry.generation, items)
        self.gauges.export(entry.name, entry.policy.registry, target, counts)
        return status

    def _held(
        self, entry: PolicyEntry, monitor: PolicyMonitor | None, last: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The status of a policy that acts on nothing (invalid, conflicting, no probes, still probing)."""
        reason = message = ""
        if entry.conflict_with:
            reason, message = "Conflict", f"policy {entry.conflict_with} already manages this registry"
        elif entry.policy is None:
            reason, message = "InvalidSpec", entry.error or "invalid spec"
        elif (failure := self.monitors.failures.get(entry.name)) is not None and monitor is None:
            reason, message = "ProbeSetupFailed", f"probes cannot start: {failure}"
        elif self.book.snapshot(entry) is None:
            reason, message = "Probing", "waiting for every replica's first verdict before acting"
        else:
            return None
        status: dict[str, Any] = {"observedGeneration": entry.generation}
        status["conditions"] = conditions(last, entry.generation, [("Ready", False, reason, message)])
        if entry.policy is not None and reason in ("Probing", "ProbeSetupFailed"):
            unknown = PolicySnapshot(entry.policy, None, frozenset())
            status["replicas"] = replicas_status(monitor, unknown, last.get("replicas"))
        return status

    def _ready(
        self, entry: PolicyEntry, snapshot: PolicySnapshot, target: Target, counts: WorkloadCounts, workers: Workers
    ) -> Condition:
        policy = snapshot.policy
        failure = self.monitors.failures.get(entry.name)
        forbidden = self.reconciler.refused(entry.name)
        if entry.error:
            return ("Ready", False, "InvalidSpec", f"keeping the last valid spec: {entry.error}")
        if failure is not None:
            return ("Ready", False, "ProbeSetupFailed", failure)
        if policy.mode is Mode.AUDIT:
            return ("Ready", True, "Audit", f"{counts.would_rewrite} workloads would be rewritten; nothing is written")
        if policy.mode is Mode.ADMISSION:
            return (
                "Ready",
                True,
                "Admission",
                f"new Pods point to {target.region}; workload templates stay as written",
            )
        if snapshot.cluster_region is None:
            return (
                "Ready",
                False,
                "ClusterRegionUnknown",
                "no node carries topology.kubernetes.io/region; set spec.region",
            )
        if forbidden is not None:
            return ("Ready", False, "Forbidden", forbidden)
        if (workers.queued or not workers.idle) and workers.busy_for >= CONVERGING_AFTER_SECONDS:
            # Only work that lasts flips Ready: a restart's registry lookups or a quick repoint do not.
            return ("Ready", False, "Converging", f"{workers.queued} workloads waiting to be written")
        return ("Ready", True, "Reconciled", f"{counts.pinned} workloads point to {target.region}")


def _control_plane(monitor: PolicyMonitor) -> Condition:
    if monitor.arm_error:
        return (
            "ControlPlaneUnavailable",
            True,
            "ArmUnreachable",
            f"keeping the last known replicas: {monitor.arm_error}",
        )
    return ("ControlPlaneUnavailable", False, "ArmReachable", f"{len(monitor.discovered)} replicas discovered in ARM")


def _switch_reason(
    previous: str,
    target: Target,
    snapshot: PolicySnapshot,
    monitor: PolicyMonitor | None,
    last: Mapping[str, Any],
) -> str:
    """Why the active endpoint moved from ``previous`` to ``target`` (nodeImageCheck: Enforce included)."""
    if target.is_global and snapshot.node_credentials_enforced:
        return "NodeCredentialsAtRisk"
    if previous == GLOBAL_REGION and _condition_reason(last.get("conditions", []), NODE_CREDENTIALS) == ENFORCED:
        return "NodeCredentialsCovered"
    return switch_reason(previous, target, snapshot, monitor)


def _wall(monotonic_time: float | None) -> str | None:
    return None if monotonic_time is None else rfc3339(wall_time(monotonic_time))


def replicas_status(
    monitor: PolicyMonitor | None, snapshot: PolicySnapshot, previous: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per replica. A state unchanged since the last status keeps its lastTransitionTime
    (as conditions do), so a restart that finds the same health writes nothing."""
    before = {row.get("region"): row for row in previous or []}
    if monitor is None:
        return [{"region": r.region, "endpoint": r.endpoint, "state": "Unknown"} for r in snapshot.policy.replicas]
    rows: list[dict[str, Any]] = []
    for health in monitor.tracker.replicas.values():
        row: dict[str, Any] = {
            "region": health.region,
            "endpoint": health.endpoint,
            "state": str(health.reported_state),
            "consecutiveFailures": health.consecutive_failures,
            "latencyMilliseconds": round(health.latency_seconds * 1000),
            "message": health.message[:512],
        }
        if (probed := _wall(health.last_probe_time)) is not None:
            row["lastProbeTime"] = probed
        old = before.get(health.region, {})
        if old.get("state") == row["state"] and old.get("lastTransitionTime"):
            row["lastTransitionTime"] = old["lastTransitionTime"]
        elif (transition := _wall(health.last_transition_time)) is not None:
            row["lastTransitionTime"] = transition
        rows.append(row)
    return rows


def switch_reason(previous: str, target: Target, snapshot: PolicySnapshot, monitor: PolicyMonitor | None) -> str:
    """Why the active endpoint moved from ``previous`` to ``target``."""
    if target.is_global:
        return "NoHealthyReplica"
    health = monitor.tracker.replicas.get(previous) if monitor is not None else None
    if health is not None and health.excluded:
        return "ReplicaExcluded"
    if health is not None and previous not in snapshot.usable:
        return "ReplicaUnhealthy"
    if previous == GLOBAL_REGION or (health is not None and previous in snapshot.usable):
        order = preference_order(snapshot.policy, snapshot.cluster_region)
        if previous == GLOBAL_REGION or (target.region in order and order.index(target.region) < order.index(previous)):
            return "ReplicaRecovered"
    return "PolicyChanged"


NODE_CREDENTIALS = "NodeCredentials"
ENFORCED = "EnforcingGlobalEndpoint"  # the NodeCredentials reason while Enforce keeps workloads global


def _condition_reason(conditions: Iterable[Mapping[str, Any]], type_: str) -> str | None:
    return next((c.get("reason") for c in conditions if c.get("type") == type_), None)


def node_credentials_condition(book: PolicyBook, snapshot: PolicySnapshot) -> tuple[bool, str, str] | None:
    """nodeImageCheck: can the nodes' kubelets authenticate to the policy's regional hosts?

    Absent with ``Off``, without node information, or when no replica is a regional ACR host
    (``<name>.<region>.geo.azurecr.io``): custom endpoints never were in the credential provider's list.
    """
    policy = snapshot.policy
    check = policy.credentials.node_image_check
    risk = book.node_risk()
    if check is NodeImageCheck.OFF or risk is None:
        return None
    if not any(needs_node_credentials(r.endpoint) for r in policy.replicas):
        return None
    if not risk.at_risk:
        return True, "NodeImagesCurrent", risk.message()
    if snapshot.node_credentials_enforced:
        return (
            False,
            ENFORCED,
            f"{risk.message()}; workloads without pull secrets for the regional hosts use {policy.registry}",
        )
    advice = "" if check is NodeImageCheck.ENFORCE else "; upgrade the node image, or set nodeImageCheck: Enforce"
    return False, "NodeImageTooOld", risk.message() + advice
