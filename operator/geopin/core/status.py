"""A policy's status block, computed from the workload views and the policy's snapshot (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from geopin.core.decisions import PolicySnapshot, audit_changes, decide, is_selected
from geopin.core.policy import GLOBAL_REGION, Mode, Policy
from geopin.core.references import InvalidReference, image_host, parse, same_host
from geopin.core.rewrite import read_record
from geopin.core.workloads import ANNOTATION_PINNED_REGION, WorkloadView

__all__ = ["WorkloadCounts", "count_workloads", "uses_registry"]


@dataclass
class WorkloadCounts:
    total: int = 0  # workloads with at least one image of the policy's registry (by intent)
    pinned: int = 0
    skipped: int = 0
    invalid: int = 0
    awaiting_replication: int = 0
    would_rewrite: int = 0  # Audit mode
    gitops_managed: int = 0  # pinned in Patch mode while a GitOps tool manages them
    audit: bool = False
    by_region: Counter[str] = field(default_factory=Counter)
    awaiting_by_region: Counter[str] = field(default_factory=Counter)

    def as_status(self) -> dict[str, int]:
        return {
            "total": self.total,
            "pinned": self.pinned,
            "skipped": self.skipped,
            "invalid": self.invalid,
            "awaitingReplication": self.awaiting_replication,
            "gitOpsManaged": self.gitops_managed,
            **({"wouldRewrite": self.would_rewrite} if self.audit else {}),
        }


def uses_registry(view: WorkloadView, policy: Policy) -> tuple[bool, bool]:
    """(has an image of the registry by intent, has an invalid reference that names the registry)."""
    record, _ = read_record(view.annotations)
    uses = any(policy.manages_host(image_host(v)) for v in record.values())
    invalid = False
    for container in view.containers:
        host = image_host(container.image)
        if host is None or not same_host(host, policy.registry):
            continue
        uses = True
        try:
            parse(container.image)
        except InvalidReference:
            invalid = True
    return uses, invalid


def count_workloads(
    views: Iterable[WorkloadView],
    snapshot: PolicySnapshot,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> WorkloadCounts:
    audit = snapshot.policy.mode is Mode.AUDIT
    counts = WorkloadCounts(audit=audit)
    for view in views:
        uses, invalid = uses_registry(view, snapshot.policy)
        if not uses:
            continue
        counts.total += 1
        counts.invalid += invalid
        record, _ = read_record(view.annotations)
        if any(snapshot.policy.manages_host(image_host(v)) for v in record.values()):
            counts.pinned += 1
            counts.gitops_managed += view.gitops is not None and snapshot.policy.mode is Mode.PATCH
            counts.by_region[view.annotations.get(ANNOTATION_PINNED_REGION, GLOBAL_REGION)] += 1
        elif not is_selected(snapshot, view, namespace_labels.get(view.namespace)):
            counts.skipped += 1
            continue
        labels = namespace_labels.get(view.namespace)
        if audit and audit_changes(snapshot, view, labels):
            counts.would_rewrite += 1
        awaiting = decide(snapshot, view, labels).awaiting
        if awaiting is not None:
            counts.awaiting_replication += 1
            counts.awaiting_by_region[awaiting] += 1
    return counts
