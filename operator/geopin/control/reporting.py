"""Policy status, Events and metrics: one loop for every policy, writing only what changed."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from geopin.control.admission_policies import MutatingPolicySync
from geopin.control.engine import PolicyBook, PolicyEntry, Reconciler, condition, now_iso
from geopin.control.monitor import PolicyMonitor, wall_time
from geopin.core.decisions import PolicySnapshot
from geopin.core.health import Target, preference_order
from geopin.core.policy import GLOBAL_REGION, Mode, Policy
from geopin.core.status import count_workloads
from geopin.core.workloads import WorkloadView
from geopin.io import metrics
from geopin.io.kube import POLICY_GROUP, POLICY_VERSION, Kube

logger = logging.getLogger(__name__)


class ReporterRuntime(Protocol):
    """What the reporter reads from the operator's runtime (``geopin.control.runtime.Runtime``),
    named here so that the runtime, which starts the reporter, is not imported by it."""

    reconciler: Reconciler
    book: PolicyBook
    monitors: dict[str, PolicyMonitor]
    mutating_policies: MutatingPolicySync | None
    kube: Kube

    async def refresh_images(self) -> None: ...
    def effective(self, name: str, policy: Policy) -> Policy: ...
    def views(self) -> list[WorkloadView]: ...
    def all_namespace_labels(self) -> dict[str, dict[str, str]]: ...


RESYNC_SECONDS = 60.0  # a full level-based pass even when nothing signalled a change
AWAITING_RESYNC_SECONDS = 5.0  # sooner while workloads wait for replication (absent manifests expire)
DEBOUNCE_SECONDS = 1.0
BUSY_REPORT_SECONDS = 5.0
CONVERGING_AFTER_SECONDS = 15.0

# The label sets each policy exported, so that stale ones (an old region) can be removed.
_exported: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}


def forget_metrics(policy: str) -> None:
    for metric, labels in _exported.pop(policy, []):
        metric.remove(*labels)


class StatusReporter:
    """One loop for every policy: recount and re-report after a write or a cluster change, and resync
    every minute. A status is patched only when it differs from the last one written."""

    def __init__(self, runtime: ReporterRuntime) -> None:
        self.runtime = runtime
        self.written: dict[str, dict[str, Any]] = {}  # policy uid → last status written (or read)
        self.active: dict[str, str] = {}  # policy uid → active region as last decided
        self.switches: dict[str, dict[str, str]] = {}  # policy uid → lastSwitch, from the decision
        self._posting: set[asyncio.Task[None]] = set()

    def decided(self, entry: PolicyEntry) -> None:
        """Count and announce a move of the policy's active endpoint when it is decided (api.md), not
        once the repoint it causes has settled. Called when the usable replicas change, and on every
        pass for what else moves it (a spec edit, the cluster's region)."""
        snapshot = None if entry.deleting else self.runtime.book.snapshot(entry)
        if snapshot is None or entry.policy is None:
            return
        target = snapshot.home()
        last = self.written.get(entry.uid, entry.observed_status)
        previous = self.active.get(entry.uid, last.get("activeRegion"))
        self.active[entry.uid] = target.region
        if previous is None or previous == target.region:
            return
        reason = switch_reason(previous, target, snapshot, self.runtime.monitors.get(entry.name))
        self.switches[entry.uid] = {"from": previous, "to": target.region, "reason": reason, "time": now_iso()}
        metrics.ENDPOINT_SWITCHES.labels(entry.name, entry.policy.registry, previous, target.region, reason).inc()
        message = f"{previous} -> {target.region} ({target.endpoint}): {reason}"
        task = asyncio.get_running_loop().create_task(
            self.runtime.kube.post_event(policy_ref(entry), "Normal", "EndpointSwitched", message)
        )
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def run(self) -> None:
        seen_version, idle_for = -1, 0.0
        while True:
            for entry in list(self.runtime.book.entries.values()):
                self.decided(entry)
            version = self.runtime.reconciler.version
            waiting = any(s.get("workloads", {}).get("awaitingReplication") for s in self.written.values())
            resync = AWAITING_RESYNC_SECONDS if waiting else RESYNC_SECONDS
            # While workers are repointing, a full pass (every workload re-planned and recounted)
            # would take the CPU they need: report every few seconds then, not after every write.
            busy = not self.runtime.reconciler.idle and idle_for < BUSY_REPORT_SECONDS
            if (version != seen_version and not busy) or idle_for >= resync:
                if waiting:
                    await self.runtime.refresh_images()
                seen_version, idle_for = version, 0.0
                for entry in list(self.runtime.book.entries.values()):
                    if not entry.deleting:
                        await self.report(entry)
            await asyncio.sleep(DEBOUNCE_SECONDS)  # the loop's period, not synchronisation
            idle_for += DEBOUNCE_SECONDS

    async def sync_mutating_policy(self, entry: PolicyEntry, status: dict[str, Any]) -> None:
        """Admission mode through MutatingAdmissionPolicy: its params follow the active endpoint."""
        sync = self.runtime.mutating_policies
        if sync is None or entry.policy is None or "activeRegion" not in status:
            return
        if entry.policy.mode is Mode.ADMISSION and not entry.error and not entry.conflict_with:
            target = Target(status["activeRegion"], status["activeEndpoint"])
            await sync.sync(self.runtime.effective(entry.name, entry.policy), target)
        elif sync.applied(entry.name):
            await sync.remove(entry.policy)

    async def report(self, entry: PolicyEntry) -> None:
        try:
            last = self.written.setdefault(entry.uid, dict(entry.observed_status))
            reconciler = self.runtime.reconciler
            # Settling (a restart's lookups, a repoint under way): report the outcome, not the transit,
            # and do not spend the workers' CPU on recounting every workload meanwhile. Only the
            # MutatingAdmissionPolicy params need the verdict at once.
            settling = bool(last) and not reconciler.idle and reconciler.busy_for < CONVERGING_AFTER_SECONDS
            if settling and self.runtime.mutating_policies is None:
                return
            self.decided(entry)
            status = report(self.runtime, entry, last, self.switches.get(entry.uid))
            await self.sync_mutating_policy(entry, status)
            if settling:
                return
            if _differs(status, last):
                await self.runtime.kube.patch_policy_status(entry.name, status)
                self.written[entry.uid] = status
        except Exception:
            logger.exception("reporting the status of policy %s failed; retrying on the next pass", entry.name)


# Fields that change on every probe: written when the status changes for another reason, never on
# their own, so a steady state makes no API writes (live values are in the metrics).
_VOLATILE_REPLICA_FIELDS = ("lastProbeTime", "latencyMilliseconds", "message")


def _differs(new: dict[str, Any], old: dict[str, Any]) -> bool:
    def strip(s: dict[str, Any]) -> Any:
        conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions", [])]
        replicas = [{k: v for k, v in r.items() if k not in _VOLATILE_REPLICA_FIELDS} for r in s.get("replicas", [])]
        return {
            **{k: v for k, v in s.items() if k not in ("conditions", "lastSwitch", "replicas")},
            "conditions": conditions,
            "replicas": replicas,
        }

    return bool(strip(new) != strip(old))


def _rfc3339(monotonic_time: float | None) -> str | None:
    if monotonic_time is None:
        return None
    return datetime.fromtimestamp(wall_time(monotonic_time), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replicas_status(
    monitor: PolicyMonitor | None, snapshot: PolicySnapshot, previous: list[dict[str, Any]] | None = None
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
        if (probed := _rfc3339(health.last_probe_time)) is not None:
            row["lastProbeTime"] = probed
        old = before.get(health.region, {})
        if old.get("state") == row["state"] and old.get("lastTransitionTime"):
            row["lastTransitionTime"] = old["lastTransitionTime"]
        elif (transition := _rfc3339(health.last_transition_time)) is not None:
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
    if health is not None and previous not in snapshot.healthy:
        return "ReplicaUnhealthy"
    if previous == GLOBAL_REGION or (health is not None and previous in snapshot.healthy):
        order = preference_order(snapshot.policy, snapshot.cluster_region)
        if previous == GLOBAL_REGION or (target.region in order and order.index(target.region) < order.index(previous)):
            return "ReplicaRecovered"
    return "PolicyChanged"


def report(
    runtime: ReporterRuntime,
    entry: PolicyEntry,
    last_status: dict[str, Any],
    last_switch: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One level-based pass for a policy: queue any divergent workload, then compute its status.

    ``last_switch`` is the move of the active endpoint last decided (StatusReporter.decided).
    """
    reconciler = runtime.reconciler
    views = runtime.views()
    queued = reconciler.enqueue_if_needed(views)
    previous = last_status.get("conditions", [])
    generation = entry.generation
    status: dict[str, Any] = {"observedGeneration": generation}
    monitor = runtime.monitors.get(entry.name)

    def conditions(*items: tuple[str, bool, str, str]) -> list[dict[str, Any]]:
        return [
            condition(previous, type_, value, reason, message, generation) for type_, value, reason, message in items
        ]

    if entry.policy is None or entry.conflict_with:
        if entry.conflict_with:
            reason, message = "Conflict", f"policy {entry.conflict_with} already manages this registry"
        else:
            reason, message = "InvalidSpec", entry.error or "invalid spec"
        status["conditions"] = conditions(("Ready", False, reason, message))
        return status

    snapshot = runtime.book.snapshot(entry)
    if snapshot is None:  # still probing: nothing is decided, nothing is rewritten
        status["conditions"] = conditions(
            ("Ready", False, "Probing", "waiting for every replica's first verdict before acting")
        )
        status["replicas"] = replicas_status(
            monitor, PolicySnapshot(entry.policy, None, frozenset()), last_status.get("replicas")
        )
        return status

    policy = entry.policy
    target = snapshot.home()
    counts = count_workloads(views, snapshot, runtime.all_namespace_labels())
    replicas = replicas_status(monitor, snapshot, last_status.get("replicas"))
    healthy = sum(r["state"] == "Healthy" for r in replicas)
    status.update(
        clusterRegion=snapshot.cluster_region or "",
        activeRegion=target.region,
        activeEndpoint=target.endpoint,
        healthySummary=f"{healthy}/{len(replicas)}",
        # What every replica's admission webhook uses; only the leader probes.
        usableRegions=sorted(snapshot.healthy),
        replicas=replicas,
        workloads=counts.as_status(),
    )

    if (switched := last_switch or last_status.get("lastSwitch")) is not None:
        status["lastSwitch"] = switched

    if entry.error:
        ready = (False, "InvalidSpec", f"keeping the last valid spec: {entry.error}")
    elif policy.mode is Mode.AUDIT:
        ready = (True, "Audit", f"{counts.would_rewrite} workloads would be rewritten; nothing is written")
    elif policy.mode is Mode.ADMISSION:
        ready = (True, "Admission", f"new Pods point to {target.region}; workload templates stay as written")
    elif snapshot.cluster_region is None:
        ready = (False, "ClusterRegionUnknown", "no node carries topology.kubernetes.io/region; set spec.region")
    elif (queued or not reconciler.idle) and reconciler.busy_for >= CONVERGING_AFTER_SECONDS:
        # Only work that lasts flips Ready: a restart's registry lookups or a quick repoint do not.
        ready = (False, "Converging", f"{queued} workloads waiting to be written")
    else:
        ready = (True, "Reconciled", f"{counts.pinned} workloads point to {target.region}")
    unhealthy = [r["region"] for r in replicas if r["state"] in ("Unhealthy", "Excluded")]
    degraded = (
        (True, "ReplicaUnavailable", f"not usable: {', '.join(unhealthy)}")
        if unhealthy
        else (False, "AllReplicasHealthy", f"{healthy}/{len(replicas)} replicas healthy")
    )
    preferred = preference_order(policy, snapshot.cluster_region)
    home = preferred[0] if preferred else GLOBAL_REGION
    failed_over = (
        (True, "FailedOver", f"pointing to {target.region} instead of {home}")
        if target.region != home
        else (False, "AtHome", f"pointing to the home region {home}")
    )
    items = [("Ready", *ready), ("Degraded", *degraded), ("FailedOver", *failed_over)]
    if policy.azure is not None and monitor is not None:
        if monitor.arm_error:
            arm = (True, "ArmUnreachable", f"keeping the last known replicas: {monitor.arm_error}")
        else:
            arm = (False, "ArmReachable", f"{len(monitor.discovered)} replicas discovered in ARM")
        items.append(("ControlPlaneUnavailable", *arm))
    status["conditions"] = conditions(*items)

    _export(entry.name, policy.registry, target.region, target.endpoint, counts.by_region, counts.awaiting_by_region)
    return status


def _export(
    policy: str,
    registry: str,
    region: str,
    endpoint: str,
    by_region: dict[str, int],
    awaiting_by_region: dict[str, int],
) -> None:
    wanted: list[tuple[Any, tuple[str, ...]]] = [(metrics.ACTIVE_REGION_INFO, (policy, registry, region, endpoint))]
    wanted += [(metrics.PINNED_WORKLOADS, (policy, r)) for r in by_region]
    wanted += [(metrics.REPLICATION_PENDING, (policy, r)) for r in awaiting_by_region]
    for metric, labels in _exported.get(policy, []):
        if (metric, labels) not in wanted:
            metric.remove(*labels)
    _exported[policy] = wanted
    metrics.ACTIVE_REGION_INFO.labels(policy, registry, region, endpoint).set(1)
    for pinned_region, count in by_region.items():
        metrics.PINNED_WORKLOADS.labels(policy, pinned_region).set(count)
    for awaiting_region, count in awaiting_by_region.items():
        metrics.REPLICATION_PENDING.labels(policy, awaiting_region).set(count)


def policy_ref(entry: PolicyEntry) -> Any:
    return {
        "apiVersion": f"{POLICY_GROUP}/{POLICY_VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": entry.name, "uid": entry.uid},
    }
