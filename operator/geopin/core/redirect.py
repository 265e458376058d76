"""Failover without restarts: a Pod of a workload pinned to an unusable replica goes to the target.

Two moments, one decision (pure, no I/O):

- at admission (``strategy: Redirect``): a new Pod created from a template that keeps its pin while
  the pinned replica is unusable gets the target's images;
- in place (``rescuePods``): a Pod already stuck pulling from an unusable replica gets its waiting
  containers' images patched (a Pod's ``image`` is mutable), so the kubelet pulls again.

Which Pods are geopin's to move: those carrying geopin's record (a Pod redirected or rescued before,
or pinned at admission), and those whose images are exactly their owner's pinned template (a Pod its
controller made from it). Never a Pod the user pinned by hand or edited, nor one of another registry.
The moved Pod records its pin as workloads do (``geopin.io/original-images``, ``pinned-region``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from geopin.core.admission import present_unless_known_absent
from geopin.core.decisions import PolicySnapshot, decide
from geopin.core.policy import Mode, Policy
from geopin.core.references import image_host
from geopin.core.rewrite import Desired, desired_state, json_patch, read_record, served_intents
from geopin.core.workloads import ANNOTATION_PINNED_REGION, KINDS, WorkloadRef, WorkloadView, view_of

__all__ = ["PodMove", "move_pod", "owner_candidates"]

POD = KINDS["Pod"]


@dataclass(frozen=True, slots=True)
class PodMove:
    """One Pod's move: the policy, from and to which region, and the guarded JSON patch."""

    policy: str
    from_region: str
    to_region: str
    patch: list[dict[str, Any]]


def owner_candidates(pod: Mapping[str, Any], namespace: str) -> list[WorkloadRef]:
    """The workloads that may hold the template a Pod was made from, most likely first.

    A Deployment's Pod is owned by a ReplicaSet named ``<deployment>-<pod-template-hash>``; a CronJob's
    by a Job named ``<cronjob>-<suffix>``. Read from the Pod alone, so admission needs no API call.
    """
    metadata = pod.get("metadata") or {}
    controllers = [
        o for o in metadata.get("ownerReferences") or [] if isinstance(o, Mapping) and o.get("controller") is True
    ]
    if not controllers:
        return []
    kind, name = str(controllers[0].get("kind") or ""), str(controllers[0].get("name") or "")
    if kind == "ReplicaSet":
        template_hash = str((metadata.get("labels") or {}).get("pod-template-hash") or "")
        deployment = name[: -len(template_hash) - 1] if template_hash and name.endswith(f"-{template_hash}") else ""
        return [*([("Deployment", namespace, deployment)] if deployment else []), ("ReplicaSet", namespace, name)]
    if kind == "Job":
        return [("Job", namespace, name), *([("CronJob", namespace, name.rsplit("-", 1)[0])] if "-" in name else [])]
    return [(kind, namespace, name)] if kind in KINDS and kind != "Pod" else []


def _pin_of(pod: WorkloadView, owner: WorkloadView | None) -> WorkloadView | None:
    """The Pod seen with the pin it stands for, or None when it is not geopin's pin."""
    if ANNOTATION_PINNED_REGION in pod.annotations and read_record(pod.annotations)[0]:
        return pod
    if owner is None or ANNOTATION_PINNED_REGION not in owner.annotations:
        return None
    record, _ = read_record(owner.annotations)
    images = {c.key: c.image for c in pod.containers}
    template = {c.key: c.image for c in owner.containers}
    if not record or any(images.get(key) != template.get(key) for key in record):
        return None  # not made from the pinned template (edited, or an older revision)
    # The owner decides selection (labels, opt-out) and preferences; the Pod's own opt-out still counts.
    return replace(pod, labels=owner.labels, annotations={**owner.annotations, **pod.annotations})


def _for_pods(snapshot: PolicySnapshot) -> PolicySnapshot:
    """As admission decides for a Pod: no hold, no registry wait, no digest resolved."""
    return replace(
        snapshot,
        held=frozenset(),
        availability=present_unless_known_absent(snapshot.availability),
        verified=None,
        policy=replace(snapshot.policy, digest_pinning=False),
    )


def move_pod(
    pod: Mapping[str, Any],
    namespace: str,
    owner: WorkloadView | None,
    snapshots: Iterable[PolicySnapshot],
    namespace_labels: Mapping[str, str] | None,
    *,
    admission: bool,
    containers: Collection[str] | None = None,
) -> PodMove | None:
    """Where a Pod pinned to an unusable replica goes, and the patch; None when it stays.

    ``admission``: a Pod being created (policies with ``strategy: Redirect`` and an admission path);
    otherwise a running Pod's rescue (``rescuePods``), limited to ``containers`` (keys such as
    ``containers/app``: those waiting on a pull).
    """
    metadata = dict(pod.get("metadata") or {})
    metadata.setdefault("namespace", namespace)
    view = view_of(POD, {**pod, "metadata": metadata})
    pinned = _pin_of(view, owner)
    if pinned is None:
        return None
    record, _ = read_record(pinned.annotations)
    region = pinned.annotations[ANNOTATION_PINNED_REGION]
    for snapshot in snapshots:
        policy = snapshot.policy
        if policy.mode is not Mode.PATCH or region in snapshot.usable:
            continue
        if not (snapshot.redirects if admission else policy.failover.rescue_pods):
            continue
        if not any(policy.manages_host(image_host(image)) for image in record.values()):
            continue
        if not _serves_its_record(pinned, policy, record):
            return None  # a template its user edited and geopin has not pinned yet: not geopin's pin
        choice = decide(_for_pods(snapshot), pinned, namespace_labels)
        if choice.target is None or choice.unknown or choice.unknown_secrets or choice.target.region == region:
            return None
        desired = desired_state(pinned, policy, choice.target)
        if containers is not None:
            current = {c.key: c.image for c in view.containers}
            desired = replace(
                desired, images={k: v if k in containers else current[k] for k, v in desired.images.items()}
            )
        ops = json_patch(POD, view, _as_pod(desired, pinned))
        if not any(op["op"] == "replace" and op["path"].endswith("/image") for op in ops):
            return None
        return PodMove(policy.name, region, choice.target.region, ops)
    return None


def _serves_its_record(pinned: WorkloadView, policy: Policy, record: Mapping[str, str]) -> bool:
    """Does every recorded image of the policy's registry show as geopin's rewrite of it? (Not when the
    user has just changed the template: its new image was never looked up, nor pinned.)"""
    managed = {image for image in record.values() if policy.manages_host(image_host(image))}
    return managed <= served_intents(pinned, policy)


def _as_pod(desired: Desired, pinned: WorkloadView) -> Desired:
    """The record the Pod carries from now on: its owner's originals, pinned where it now points."""
    originals = desired.originals or read_record(pinned.annotations)[0]
    return replace(desired, originals=originals, pull_secrets=None)
