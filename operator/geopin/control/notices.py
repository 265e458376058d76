"""The Events and metrics that announce decisions about workloads, each said once per workload.

The decisions themselves are queries (``core.decisions``); this is where the leader tells the user
about them: what Audit mode would write, an image geopin will not touch, a workload held back until
its images replicate, a GitOps tool that will see drift, a repoint done. What was said is remembered
per workload and forgotten with it, so the memory follows the cluster's size, not its history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from geopin.core.decisions import PolicySnapshot, audit_changes
from geopin.core.policy import Mode
from geopin.core.redirect import PodMove
from geopin.core.rewrite import Desired, changed_containers
from geopin.core.workloads import KINDS, WorkloadView
from geopin.io import metrics
from geopin.io.event_backlog import EventBacklog

__all__ = ["WorkloadNotices", "object_ref"]

logger = logging.getLogger(__name__)


def object_ref(view: WorkloadView) -> dict[str, Any]:
    kind = KINDS[view.kind]
    return {
        "apiVersion": f"{kind.group}/{kind.version}" if kind.group else kind.version,
        "kind": view.kind,
        "metadata": {"name": view.name, "namespace": view.namespace, "uid": view.uid},
    }


class WorkloadNotices:
    def __init__(self, events: EventBacklog) -> None:
        self.events = events
        self._said: dict[str, set[str]] = {}  # workload uid → keys of what was said about it

    def post(self, view: WorkloadView, type: str, reason: str, message: str, once: bool = False) -> None:
        """Queue an Event: it never holds up a workload write, and goes out once the workers are idle."""
        self.events.add(object_ref(view), type, reason, message, once)

    def _first_time(self, view: WorkloadView, key: str) -> bool:
        said = self._said.setdefault(view.uid, set())
        if key in said:
            return False
        said.add(key)
        return True

    def forget(self, uid: str) -> None:
        """The workload is gone."""
        self._said.pop(uid, None)

    def pod_redirected(self, owner: WorkloadView, move: PodMove) -> None:
        """A new Pod of ``owner`` went to another replica at admission: said once per workload and switch."""
        if not self._first_time(owner, f"redirected:{move.from_region}>{move.to_region}"):
            return
        self.post(
            owner,
            "Normal",
            "PodRedirected",
            f"policy {move.policy}: {move.from_region} is unusable, so new Pods are pinned to {move.to_region} at "
            f"admission; the template keeps {move.from_region} and running Pods are not restarted",
        )

    def switched(self) -> None:
        """A policy's usable replicas changed: the next redirect of each workload is news again."""
        for said in self._said.values():
            said.difference_update({key for key in said if key.startswith("redirected:")})

    def decided(
        self,
        view: WorkloadView,
        desired: Desired | None,
        snapshots: Iterable[PolicySnapshot],
        labels: Mapping[str, str] | None,
    ) -> None:
        """What a pass over the workload found: Audit-mode rewrites, invalid images, a replication wait."""
        self.audit(view, snapshots, labels)
        if desired is not None and not desired.undecided:
            self.invalid(view, desired)
            self.awaiting(view, desired)

    def audit(self, view: WorkloadView, snapshots: Iterable[PolicySnapshot], labels: Mapping[str, str] | None) -> None:
        """Audit mode: an Event and a metric for what Patch mode would write; nothing is written."""
        for snapshot in snapshots:
            if snapshot.policy.mode is not Mode.AUDIT:
                continue
            changes = audit_changes(snapshot, view, labels)
            if not changes or not self._first_time(view, "audit:" + ";".join(f"{k}={new}" for k, _, new in changes)):
                continue
            metrics.WORKLOAD_REWRITES.labels(snapshot.policy.name, view.kind, "audit").inc()
            moves = ", ".join(f"{k}: {old} -> {new}" for k, old, new in changes)
            self.post(view, "Normal", "AuditWouldRewrite", f"policy {snapshot.policy.name} (Audit): {moves}")

    def invalid(self, view: WorkloadView, desired: Desired) -> None:
        for invalid in desired.invalid:
            if not self._first_time(view, f"invalid:{invalid.image}"):
                continue
            message = f"{invalid.container}: {invalid.image!r} left untouched: {invalid.reason}"
            logger.warning("%s/%s %s", view.namespace, view.name, message)
            self.post(view, "Warning", "InvalidImageReference", message, once=True)

    def awaiting(self, view: WorkloadView, desired: Desired) -> None:
        for policy, region in desired.awaiting:
            if not self._first_time(view, f"awaiting:{region}"):
                continue
            message = f"policy {policy}: an image is not replicated to {region} yet; staying where it is, retrying"
            self.post(view, "Normal", "AwaitingReplication", message, once=True)

    def written(self, view: WorkloadView, desired: Desired, policy: str) -> None:
        """A write went through: count it, say where the images went, warn a GitOps tool's user once."""
        said = self._said.get(view.uid)
        if said is not None:  # a later wait for replication is news again
            said.difference_update({key for key in said if key.startswith("awaiting:")})
        changed = changed_containers(view, desired)
        metrics.WORKLOAD_REWRITES.labels(policy, view.kind, "pinned" if desired.originals else "restored").inc()
        if changed:
            moves = ", ".join(f"{c.key}: {c.image} -> {desired.images[c.key]}" for c in changed)
            if desired.originals:
                self.post(view, "Normal", "Repinned", f"pinned to {desired.pinned_region}: {moves}")
            else:
                self.post(view, "Normal", "Restored", f"original images restored: {moves}")
        if view.gitops is not None and desired.originals and self._first_time(view, "gitops"):
            self.post(
                view,
                "Warning",
                "GitOpsDriftRisk",
                f"managed by {view.gitops}: geopin's image rewrite (field manager geopin) will show as drift; "
                "ignore it (Argo CD ignoreDifferences managedFieldsManagers: [geopin]) or use mode: Admission",
                once=True,
            )

    def missing_pull_secret(self, view: WorkloadView, host: str, secrets: Iterable[str]) -> None:
        """pullSecrets: the workload's imagePullSecrets have no key the kubelet would use for ``host``."""
        if not self._first_time(view, f"pull-secret:{host}"):
            return
        self.post(
            view,
            "Warning",
            "PullSecretMissingRegionalHost",
            f"imagePullSecrets ({', '.join(secrets)}) have no credentials for {host}: the kubelet matches one DNS "
            "label per '*' (a key for the global host does not cover regional hosts); set pullSecrets: Extend, or "
            "add a key for the regional hosts",
        )
