"""Admission mode: the JSON patch for a Pod at creation, from the in-memory decision (pure, no I/O).

The webhook must answer in milliseconds and must never wait on a registry, so a replica's
manifest presence is read from the cache only (unknown counts as present) and digest pinning does
not apply to Pods. For the ``pods/ephemeralcontainers`` subresource only the ephemeral containers
change (a Pod's other fields are immutable there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.rewrite import json_patch
from geopin.core.workloads import KINDS, view_of

__all__ = ["mutate_pod", "present_unless_known_absent"]

POD = KINDS["Pod"]


def present_unless_known_absent(
    availability: Callable[[str, str], bool | None] | None,
) -> Callable[[str, str], bool | None] | None:
    """Pods never wait on a registry: an unknown manifest counts as present (and, with ``verified``
    left out, a guess as good as an answer)."""
    if availability is None:
        return None
    return lambda image, region: availability(image, region) is not False


def mutate_pod(
    pod: Mapping[str, Any],
    namespace: str,
    snapshots: Iterable[PolicySnapshot],
    namespace_labels: Mapping[str, str] | None,
    subresource: str | None = None,
) -> list[dict[str, Any]]:
    """The RFC 6902 patch geopin adds to a Pod being created (or to its new ephemeral containers)."""
    metadata = dict(pod.get("metadata") or {})
    metadata.setdefault("namespace", namespace)
    view = view_of(POD, {**pod, "metadata": metadata})
    admission_snapshots = [
        replace(
            s,
            policy=replace(s.policy, digest_pinning=False),
            availability=present_unless_known_absent(s.availability),
            verified=None,
        )
        for s in snapshots
    ]
    desired = plan_workload(view, admission_snapshots, namespace_labels, admission=True)
    if desired is None or desired.undecided:
        return []  # never wait at admission: the Pod keeps the image it was created with
    ops = json_patch(POD, view, desired)
    if subresource == "ephemeralcontainers":
        ops = [op for op in ops if op["path"].startswith("/spec/ephemeralContainers/")]
    return ops
