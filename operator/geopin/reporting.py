"""Policy status, Events and metrics: one loop for every policy, writing only what changed."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from geopin import metrics
from geopin.engine import PolicyEntry, condition, now_iso
from geopin.kube import POLICY_GROUP, POLICY_VERSION
from geopin.policy import Mode
from geopin.status import count_workloads, healthy_summary, replicas_status

if TYPE_CHECKING:
    from geopin.handlers.runtime import Runtime

logger = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0  # a full level-based pass even when nothing signalled a change
DEBOUNCE_SECONDS = 1.0

# The label sets each policy exported, so that stale ones (an old region) can be removed.
_exported: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}


def forget_metrics(policy: str) -> None:
    for metric, labels in _exported.pop(policy, []):
        metric.remove(*labels)


class StatusReporter:
    """One loop for every policy: recount and re-report after a write or a cluster change, and resync
    every minute. A status is patched only when it differs from the last one written."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.written: dict[str, dict[str, Any]] = {}  # policy uid → last status written (or read)

    async def run(self) -> None:
        seen_version, idle_for = -1, 0.0
        while True:
            version = self.runtime.reconciler.version
            if version != seen_version or idle_for >= RESYNC_SECONDS:
                seen_version, idle_for = version, 0.0
                for entry in list(self.runtime.book.entries.values()):
                    if not entry.deleting:
                        await self.report(entry)
            await asyncio.sleep(DEBOUNCE_SECONDS)  # the loop's period, not synchronisation
            idle_for += DEBOUNCE_SECONDS

    async def report(self, entry: PolicyEntry) -> None:
        try:
            last = self.written.setdefault(entry.uid, dict(entry.observed_status))
            status, switch = report(self.runtime, entry, last)
            if switch:
                await self.runtime.kube.post_event(_policy_ref(entry), "Normal", "EndpointSwitched", switch)
            if _differs(status, last):
                await self.runtime.kube.patch_policy_status(entry.name, status)
                self.written[entry.uid] = status
        except Exception:
            logger.exception("reporting the status of policy %s failed; retrying on the next pass", entry.name)


def _differs(new: dict[str, Any], old: dict[str, Any]) -> bool:
    def strip(s: dict[str, Any]) -> Any:
        conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions", [])]
        return {
            **{k: v for k, v in s.items() if k not in ("conditions", "lastSwitch")},
            "conditions": conditions,
        }

    return bool(strip(new) != strip(old))


def report(runtime: Runtime, entry: PolicyEntry, last_status: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """One level-based pass for a policy: queue any divergent workload, then compute its status.

    Returns the status and, when the active region changed since the last status, the switch message.
    """
    last_active: str | None = last_status.get("activeRegion")
    switch: str | None = None
    reconciler = runtime.reconciler
    views = runtime.views()
    queued = reconciler.enqueue_if_needed(views)
    previous = last_status.get("conditions", [])
    generation = entry.generation
    status: dict[str, Any] = {"observedGeneration": generation}
    snapshot = runtime.book.snapshot(entry)

    if entry.policy is None or snapshot is None:
        if entry.conflict_with:
            reason, message = "Conflict", f"policy {entry.conflict_with} already manages this registry"
        else:
            reason, message = "InvalidSpec", entry.error or "invalid spec"
        status["conditions"] = [condition(previous, "Ready", False, reason, message, generation)]
        return status, None

    target = snapshot.home()
    counts = count_workloads(views, snapshot, runtime.all_namespace_labels())
    status.update(
        clusterRegion=snapshot.cluster_region or "",
        activeRegion=target.region,
        activeEndpoint=target.endpoint,
        healthySummary=healthy_summary(snapshot),
        replicas=replicas_status(snapshot),
        workloads=counts.as_status(),
    )
    if last_active is not None and last_active != target.region:
        reason = "PolicyChanged"
        metrics.ENDPOINT_SWITCHES.labels(entry.name, entry.policy.registry, last_active, target.region, reason).inc()
        status["lastSwitch"] = {"from": last_active, "to": target.region, "reason": reason, "time": now_iso()}
        switch = f"{last_active} -> {target.region} ({target.endpoint}): {reason}"
    elif "lastSwitch" in last_status:
        status["lastSwitch"] = last_status["lastSwitch"]

    if entry.error:
        ready = (False, "InvalidSpec", f"keeping the last valid spec: {entry.error}")
    elif entry.policy.mode is Mode.ADMISSION:
        ready = (False, "ModeNotImplemented", "Admission mode is not available yet; nothing is rewritten")
    elif snapshot.cluster_region is None:
        ready = (
            False,
            "ClusterRegionUnknown",
            "no node carries topology.kubernetes.io/region; set spec.region",
        )
    elif queued or not reconciler.idle:
        ready = (False, "Converging", f"{queued} workloads waiting to be written")
    else:
        ready = (True, "Reconciled", f"{counts.pinned} workloads point to {target.region}")
    status["conditions"] = [condition(previous, "Ready", *ready, generation)]

    _export(entry.name, entry.policy.registry, target.region, target.endpoint, counts.by_region)
    return status, switch


def _export(policy: str, registry: str, region: str, endpoint: str, by_region: dict[str, int]) -> None:
    wanted: list[tuple[Any, tuple[str, ...]]] = [(metrics.ACTIVE_REGION_INFO, (policy, registry, region, endpoint))]
    wanted += [(metrics.PINNED_WORKLOADS, (policy, r)) for r in by_region]
    for metric, labels in _exported.get(policy, []):
        if (metric, labels) not in wanted:
            metric.remove(*labels)
    _exported[policy] = wanted
    metrics.ACTIVE_REGION_INFO.labels(policy, registry, region, endpoint).set(1)
    for pinned_region, count in by_region.items():
        metrics.PINNED_WORKLOADS.labels(policy, pinned_region).set(count)


def _policy_ref(entry: PolicyEntry) -> Any:
    return {
        "apiVersion": f"{POLICY_GROUP}/{POLICY_VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": entry.name, "uid": entry.uid},
    }
