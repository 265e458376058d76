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
from geopin.core.nodes import needs_node_credentials
from geopin.core.policy import GLOBAL_REGION, Mode, NodeImageCheck, Policy
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
    async def refresh_pull_secrets(self) -> None: ...
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

    async def run(self) -> None:
        seen_version, idle_for = -1, 0.0
        while True:
            version = self.runtime.reconciler.version
            waiting = any(s.get("workloads", {}).get("awaitingReplication") for s in self.written.values())
            resync = AWAITING_RESYNC_SECONDS if waiting else RESYNC_SECONDS
            # While workers are repointing, a full pass (every workload re-planned and recounted)
            # would take the CPU they need: report every few seconds then, not after every write.
            busy = not self.runtime.reconciler.idle and idle_for < BUSY_REPORT_SECONDS
            if (version != seen_version and not busy) or idle_for >= resync:
                if waiting:
                    await self.runtime.refresh_images()
                await self.runtime.refresh_pull_secrets()
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
            status, switch = report(self.runtime, entry, last)
            await self.sync_mutating_policy(entry, status)
            if settling:
                return
            if switch and entry.policy is not None:
                previous, target = last.get("activeRegion"), status.get("activeRegion")
                reason = status["lastSwitch"]["reason"]
                metrics.ENDPOINT_SWITCHES.labels(entry.name, entry.policy.registry, previous, target, reason).inc()
                await self.runtime.kube.post_event(policy_ref(entry), "Normal", "EndpointSwitched", switch)
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
    runtime: ReporterRuntime, entry: PolicyEntry, last_status: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """One level-based pass for a policy: queue any divergent workload, then compute its status.

    Returns the status and, when the active region changed since the last status, the switch message.
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
        return status, None

    snapshot = runtime.book.snapshot(entry)
    if snapshot is None:  # still probing: nothing is decided, nothing is rewritten
        status["conditions"] = conditions(
            ("Ready", False, "Probing", "waiting for every replica's first verdict before acting")
        )
        status["replicas"] = replicas_status(
            monitor, PolicySnapshot(entry.policy, None, frozenset()), last_status.get("replicas")
        )
        return status, None

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

    switch: str | None = None
    last_active: str | None = last_status.get("activeRegion")
    if last_active is not None and last_active != target.region:
        reason = switch_reason(last_active, target, snapshot, monitor)
        if target.is_global and snapshot.node_credentials_enforced:
            reason = "NodeCredentialsAtRisk"
        elif last_active == GLOBAL_REGION and _condition_reason(previous, "NodeCredentials") == ENFORCED:
            reason = "NodeCredentialsCovered"
        status["lastSwitch"] = {"from": last_active, "to": target.region, "reason": reason, "time": now_iso()}
        switch = f"{last_active} -> {target.region} ({target.endpoint}): {reason}"
    elif "lastSwitch" in last_status:
        status["lastSwitch"] = last_status["lastSwitch"]

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
    node_credentials = node_credentials_condition(runtime.book, snapshot)
    if node_credentials is not None:
        items.append(("NodeCredentials", *node_credentials))
    status["conditions"] = conditions(*items)

    _export(entry.name, policy.registry, target.region, target.endpoint, counts.by_region, counts.awaiting_by_region)
    return status, switch


ENFORCED = "EnforcingGlobalEndpoint"


def _condition_reason(conditions: list[dict[str, Any]], type_: str) -> str | None:
    return next((c.get("reason") for c in conditions if c.get("type") == type_), None)


def node_credentials_condition(book: PolicyBook, snapshot: PolicySnapshot) -> tuple[bool, str, str] | None:
    """nodeImageCheck: can the nodes' kubelets authenticate to the policy's regional hosts?

    Absent with ``Off``, without node information, or when no replica is a regional ACR host
    (``<name>.<region>.geo.azurecr.io``): custom endpoints never were in the credential provider's list.
    """
    policy = snapshot.policy
    check = policy.credentials.node_image_check
    risk = book.node_risk() if book.node_risk is not None else None
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
