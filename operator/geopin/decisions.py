"""One workload + every policy's current view of the world → the workload's desired state (pure).

A policy acts on a workload in one of three ways: point its images at a target, restore them (the
workload opted out, is not selected, or the policy is being deleted), or leave it alone (the policy
is invalid, in Audit mode, or conflicts with an older one). Several policies (one per registry) are
folded one after the other, each keeping the others' record entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from geopin.health import Target, choose
from geopin.policy import Mode, Policy
from geopin.rewrite import Desired, InvalidImage, desired_state, encode_record
from geopin.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_REGION,
    WorkloadView,
)

__all__ = ["DEFAULT_EXCLUDED_NAMESPACES", "PolicySnapshot", "decide", "is_selected", "plan_workload"]

DEFAULT_EXCLUDED_NAMESPACES = frozenset({"kube-system"})


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """What one policy knows at an instant; immutable so workers can share it without locks."""

    policy: Policy
    cluster_region: str | None
    healthy: frozenset[str]
    deleting: bool = False
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        """Audit mode computes everything and writes nothing."""
        return self.policy.mode is Mode.PATCH

    def home(self) -> Target:
        return choose(self.policy, self.cluster_region, self.healthy)


def is_selected(snapshot: PolicySnapshot, view: WorkloadView, namespace_labels: Mapping[str, str] | None) -> bool:
    policy = snapshot.policy
    if view.skipped:
        return False
    if policy.namespace_selector.empty:
        if view.namespace in snapshot.excluded_namespaces:
            return False
    elif namespace_labels is None or not policy.namespace_selector.matches(namespace_labels):
        return False
    return policy.workload_selector.matches(view.labels)


def decide(snapshot: PolicySnapshot, view: WorkloadView, namespace_labels: Mapping[str, str] | None) -> Target | None:
    """The target for this workload under this policy, or None to restore it."""
    if snapshot.deleting or not is_selected(snapshot, view, namespace_labels):
        return None
    return choose(
        snapshot.policy,
        snapshot.cluster_region,
        snapshot.healthy,
        preferred=view.annotations.get(ANNOTATION_REGION),
        current=view.annotations.get(ANNOTATION_PINNED_REGION),
    )


def _applied(view: WorkloadView, desired: Desired) -> WorkloadView:
    """The view as it would be after ``desired`` is written (for folding the next policy)."""
    containers = tuple(replace(c, image=desired.images.get(c.key, c.image)) for c in view.containers)
    annotations = {
        k: v for k, v in view.annotations.items() if k not in (ANNOTATION_ORIGINAL_IMAGES, ANNOTATION_PINNED_REGION)
    }
    if desired.originals:
        annotations[ANNOTATION_ORIGINAL_IMAGES] = encode_record(desired.originals)
        if desired.pinned_region is not None:
            annotations[ANNOTATION_PINNED_REGION] = desired.pinned_region
        elif ANNOTATION_PINNED_REGION in view.annotations:
            annotations[ANNOTATION_PINNED_REGION] = view.annotations[ANNOTATION_PINNED_REGION]
    return replace(view, containers=containers, annotations=annotations)


def plan_workload(
    view: WorkloadView, snapshots: Iterable[PolicySnapshot], namespace_labels: Mapping[str, str] | None
) -> Desired | None:
    """The workload's desired state under every writing policy; None when no policy writes."""
    current = view
    result: Desired | None = None
    invalid: list[InvalidImage] = []
    for snapshot in snapshots:
        desired = desired_state(current, snapshot.policy, decide(snapshot, current, namespace_labels), snapshot.digests)
        invalid.extend(i for i in desired.invalid if i not in invalid)
        if not snapshot.writes:
            continue
        pinned = desired.pinned_region
        if pinned is None and result is not None and desired.originals:
            pinned = result.pinned_region
        result = replace(desired, pinned_region=pinned)
        current = _applied(current, result)
    return None if result is None else replace(result, invalid=tuple(invalid))
