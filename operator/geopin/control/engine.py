"""The operator's in-memory state and its only writer of workloads.

``PolicyBook`` holds what every policy knows (spec, cluster region, healthy replicas, deletion).
``Reconciler`` owns a de-duplicating queue of workload references and a fixed pool of worker tasks:
whatever the number of workloads, there are ``workers`` tasks and at most that many API calls in
flight. A worker reads the latest view, computes the desired state (pure), and sends at most one
guarded JSON patch; on a conflict it re-reads the object and tries again, so a user's concurrent
edit is never overwritten. Nothing here touches Kopf, so it can run under any event source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from geopin.control.pull_secret_sync import PullSecretSync
from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES, PolicySnapshot, audit_changes, plan_workload
from geopin.core.nodes import NodeRisk
from geopin.core.policy import AUTO_REGION, Mode, NodeImageCheck, Policy, cluster_region_of
from geopin.core.references import image_host, split_host
from geopin.core.rewrite import Desired, changed_containers, json_patch, read_record
from geopin.core.workloads import KINDS, WorkloadView, view_of
from geopin.io import metrics
from geopin.io.event_backlog import EventBacklog
from geopin.io.images import ImageCache
from geopin.io.kube import ApiError, Kube

__all__ = ["PolicyBook", "PolicyEntry", "Reconciler", "WorkloadRef"]

logger = logging.getLogger(__name__)

WorkloadRef = tuple[str, str, str]  # (kind, namespace, name)


def object_ref(view: WorkloadView) -> dict[str, Any]:
    kind = KINDS[view.kind]
    return {
        "apiVersion": f"{kind.group}/{kind.version}" if kind.group else kind.version,
        "kind": view.kind,
        "metadata": {"name": view.name, "namespace": view.namespace, "uid": view.uid},
    }


@dataclass
class PolicyEntry:
    name: str
    uid: str
    created: str  # creationTimestamp: the older of two policies for one registry wins
    generation: int
    policy: Policy | None  # None while the spec is invalid
    error: str | None = None
    deleting: bool = False
    conflict_with: str | None = None
    observed_status: dict[str, Any] = field(default_factory=dict)  # as read from the API at first sight


@dataclass
class PolicyBook:
    """Every known policy, plus the cluster facts they share."""

    node_regions: Callable[[], list[str | None]] = list
    # The replicas each policy may use now (its probe loop's verdict), None while undecided.
    # Without a health source every listed replica is usable (offline planning, unit tests).
    usable: Callable[[str], frozenset[str] | None] | None = None
    # Each policy's manifest cache (replicationCheck, digestPinning); None: no lookups (offline).
    images: Callable[[str], ImageCache | None] | None = None
    # A policy as it stands now: its spec plus the replicas ARM discovered.
    effective: Callable[[str, Policy], Policy] | None = None
    # Nodes whose kubelet has no credentials for regional hosts (nodeImageCheck); None: not known.
    node_risk: Callable[[], NodeRisk | None] | None = None
    # A pull secret's registry keys, (namespace, name) → keys, None while not read (nodeImageCheck: Enforce).
    pull_secret_keys: Callable[[str, str], tuple[str, ...] | None] | None = None
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    entries: dict[str, PolicyEntry] = field(default_factory=dict)

    def upsert(self, entry: PolicyEntry) -> None:
        self.entries[entry.name] = entry
        self._resolve_conflicts()

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self._resolve_conflicts()

    def _resolve_conflicts(self) -> None:
        owners: dict[tuple[str, str | None], PolicyEntry] = {}
        for entry in sorted(self.entries.values(), key=lambda e: (e.created, e.name)):
            entry.conflict_with = None
            if entry.policy is None:
                continue
            host = split_host(entry.policy.registry)
            if host in owners:
                entry.conflict_with = owners[host].name
            else:
                owners[host] = entry

    def cluster_region(self, policy: Policy) -> str | None:
        if policy.region != AUTO_REGION:
            return policy.region
        return cluster_region_of(self.node_regions())

    def snapshot(self, entry: PolicyEntry) -> PolicySnapshot | None:
        """What the policy knows now; None while it must not act (invalid, conflicting, still probing)."""
        if entry.policy is None or entry.conflict_with is not None:
            return None
        if entry.deleting:
            healthy: frozenset[str] = frozenset()  # restoring needs no health
        elif self.usable is None:
            healthy = frozenset(r.region for r in entry.policy.replicas)
        else:
            usable = self.usable(entry.name)
            if usable is None:
                return None
            healthy = usable
        cache = self.images(entry.name) if self.images is not None else None
        policy = self.effective(entry.name, entry.policy) if self.effective is not None else entry.policy
        return PolicySnapshot(
            node_credentials_enforced=self.enforces_node_credentials(policy),
            pull_secret_keys=self.pull_secret_keys,
            policy=policy,
            cluster_region=self.cluster_region(entry.policy),
            healthy=healthy,
            availability=cache.available if cache is not None else None,
            digest_of=cache.digest_of if cache is not None else None,
            deleting=entry.deleting,
            excluded_namespaces=self.excluded_namespaces,
        )

    def enforces_node_credentials(self, policy: Policy) -> bool:
        """nodeImageCheck: Enforce, and a schedulable node cannot authenticate to regional hosts."""
        if policy.credentials.node_image_check is not NodeImageCheck.ENFORCE or self.node_risk is None:
            return False
        risk = self.node_risk()
        return risk is not None and risk.schedulable > 0

    def snapshots(self) -> list[PolicySnapshot]:
        return [s for e in sorted(self.entries.values(), key=lambda e: e.name) if (s := self.snapshot(e))]


def records_policy(view: WorkloadView, policy: Policy) -> bool:
    """Does the workload hold an original-images entry of this policy's registry?"""
    record, _ = read_record(view.annotations)
    return any(policy.manages_host(image_host(v)) for v in record.values())


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        book: PolicyBook,
        views: Callable[[WorkloadRef], WorkloadView | None],
        namespace_labels: Callable[[str], Mapping[str, str] | None],
        resolve: Callable[[str, list[tuple[str, str]]], Awaitable[None]] | None = None,
        read_pull_secrets: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None,
        all_views: Callable[[], list[WorkloadView]] = list,
        workers: int = 8,
        retries: int = 5,
    ) -> None:
        self.kube = kube
        self.book = book
        self.views = views
        self.namespace_labels = namespace_labels
        self.resolve = resolve
        self.read_pull_secrets = read_pull_secrets
        self.all_views = all_views
        self.pull_secrets = PullSecretSync(kube, self.post_event)
        self.workers = workers
        self.retries = retries
        self._queue: asyncio.Queue[WorkloadRef] = asyncio.Queue()
        self._pending: set[WorkloadRef] = set()
        self._busy = 0
        self._busy_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._reported_invalid: set[tuple[str, str]] = set()
        self.events = EventBacklog(kube, busy=lambda: not self.idle)
        self.version = 0  # bumped after every write and cluster change: status loops recount

    # -- planning (pure, cheap: safe to call from event handlers) -----------------------------------

    def desired(self, view: WorkloadView) -> Desired | None:
        return plan_workload(view, self.book.snapshots(), self.namespace_labels(view.namespace))

    def needs_write(self, view: WorkloadView) -> bool:
        """Would a worker write this workload? (True too when a registry lookup must decide.)"""
        # Called for every watch event: the snapshots and labels are computed once for both uses.
        snapshots, labels = self.book.snapshots(), self.namespace_labels(view.namespace)
        if self.active:
            self.report_audit(view, snapshots, labels)
        desired = plan_workload(view, snapshots, labels)
        if desired is None:
            return False
        if desired.undecided:
            return True
        if self.active:  # only the leader reports
            self._report_invalid(view, desired)
            self._report_awaiting(view, desired)
        return bool(json_patch(KINDS[view.kind], view, desired))

    def report_audit(
        self, view: WorkloadView, snapshots: list[PolicySnapshot], labels: Mapping[str, str] | None
    ) -> None:
        """Audit mode: an Event and a metric for what Patch mode would write; nothing is written."""
        if not self.active:
            return
        for snapshot in snapshots:
            if snapshot.policy.mode is not Mode.AUDIT:
                continue
            changes = audit_changes(snapshot, view, labels)
            key = (view.uid, "audit:" + ";".join(f"{k}={new}" for k, _, new in changes))
            if not changes or key in self._reported_invalid:
                continue
            self._reported_invalid.add(key)
            metrics.WORKLOAD_REWRITES.labels(snapshot.policy.name, view.kind, "audit").inc()
            moves = ", ".join(f"{k}: {old} -> {new}" for k, old, new in changes)
            self.post_event(view, "Normal", "AuditWouldRewrite", f"policy {snapshot.policy.name} (Audit): {moves}")

    def _report_awaiting(self, view: WorkloadView, desired: Desired) -> None:
        for policy, region in desired.awaiting:
            key = (view.uid, f"awaiting:{region}")
            if key in self._reported_invalid:
                continue
            self._reported_invalid.add(key)
            message = f"policy {policy}: an image is not replicated to {region} yet; staying where it is, retrying"
            self.post_event(view, "Normal", "AwaitingReplication", message, once=True)

    def _report_invalid(self, view: WorkloadView, desired: Desired) -> None:
        for invalid in desired.invalid:
            key = (view.uid, invalid.image)
            if key in self._reported_invalid:
                continue
            self._reported_invalid.add(key)
            message = f"{invalid.container}: {invalid.image!r} left untouched: {invalid.reason}"
            logger.warning("%s/%s %s", view.namespace, view.name, message)
            self.post_event(view, "Warning", "InvalidImageReference", message, once=True)

    def post_event(self, view: WorkloadView, type: str, reason: str, message: str, once: bool = False) -> None:
        """Queue an Event: it never holds up a workload write, and goes out once the workers are idle."""
        self.events.add(object_ref(view), type, reason, message, once)

    # -- queue ----------------------------------------------------------------------------------------

    def enqueue(self, ref: WorkloadRef) -> None:
        if ref not in self._pending:
            if self.idle:
                self._busy_since = time.monotonic()
            self._pending.add(ref)
            self._queue.put_nowait(ref)

    def enqueue_if_needed(self, views: Iterable[WorkloadView]) -> int:
        count = 0
        for view in views:
            if self.needs_write(view):
                self.enqueue(view.ref)
                count += 1
        return count

    @property
    def active(self) -> bool:
        """Workers are running: this replica writes (it leads, or runs alone)."""
        return bool(self._tasks)

    def touch(self) -> None:
        """Something changed that may alter a policy's status or decisions."""
        self.version += 1

    @property
    def idle(self) -> bool:
        return not self._pending and self._busy == 0

    @property
    def busy_for(self) -> float:
        """Seconds since the queue last went from empty to non-empty (0 when idle)."""
        return 0.0 if self.idle else time.monotonic() - self._busy_since

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"geopin-worker-{i}") for i in range(self.workers)]
        self.events.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.events.stop()

    async def _worker(self) -> None:
        while True:
            ref = await self._queue.get()
            self._pending.discard(ref)
            self._busy += 1
            try:
                await self.reconcile(ref)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconciling %s/%s/%s failed; the next resync retries it", *ref)
            finally:
                self._busy -= 1
                self._queue.task_done()

    # -- one workload ---------------------------------------------------------------------------------

    async def reconcile(self, ref: WorkloadRef) -> None:
        """Bring one workload to its desired state with at most one successful write."""
        kind = KINDS[ref[0]]
        view = self.views(ref)
        delay = 0.2
        for attempt in range(self.retries):
            if view is None:
                return
            desired = self.desired(view)
            if desired is not None and desired.undecided:
                await self._lookup(desired)
                desired = self.desired(view)
            if desired is None or desired.undecided:
                return  # still undecidable (the registry did not answer): the next resync retries
            self._report_awaiting(view, desired)
            desired = await self.pull_secrets.prepare(view, desired, self._managing(view, desired))
            ops = json_patch(kind, view, desired)
            if not ops:
                return
            policy = self._policy_label(view, desired)
            try:
                outcome = await self.kube.patch(kind, view.namespace, view.name, ops)
            except ApiError as e:
                metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "error").inc()
                if e.status == 403:
                    logger.error("patching %s %s/%s is forbidden (check geopin's RBAC): %s", kind.kind, *ref[1:], e)
                    return  # retrying cannot help; the next resync tries again
                logger.warning("patching %s %s/%s failed (attempt %d): %s", kind.kind, *ref[1:], attempt + 1, e)
                await asyncio.sleep(delay)  # backoff between retries of a failed API call, not a sync point
                delay = min(delay * 2, 5.0)
                continue
            except Exception as e:
                metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "error").inc()
                logger.warning("patching %s %s/%s failed (attempt %d): %s", kind.kind, *ref[1:], attempt + 1, e)
                await asyncio.sleep(delay)  # backoff between retries of a failed API call, not a sync point
                delay = min(delay * 2, 5.0)
                continue
            if outcome.result == "gone":
                return
            if outcome.result == "conflict":
                metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "conflict").inc()
                body = await self.kube.get(kind, view.namespace, view.name)
                view = view_of(kind, body) if body is not None else None
                continue
            self._announce(view, desired, policy)
            self._warn_gitops(view, desired)
            if desired.pull_secrets is not None and set(view.pull_secrets) - set(desired.pull_secrets):
                await self.pull_secrets.collect(view.namespace, self._referenced_elsewhere(view))
            self.touch()
            return
        logger.error(
            "gave up on %s %s/%s after %d attempts; the next resync retries it",
            kind.kind,
            *ref[1:],
            self.retries,
        )

    async def _lookup(self, desired: Desired) -> None:
        """Ask the registries (manifests, digests) and the API server (pull secrets) what a decision needs."""
        lookups: list[Awaitable[None]] = []
        if self.resolve is not None:
            by_policy: dict[str, list[tuple[str, str]]] = {}
            for policy, image, region in desired.unknown:
                by_policy.setdefault(policy, []).append((image, region))
            lookups.extend(self.resolve(policy, pairs) for policy, pairs in by_policy.items())
        if self.read_pull_secrets is not None and desired.unknown_secrets:
            lookups.append(self.read_pull_secrets(list(desired.unknown_secrets)))
        await asyncio.gather(*lookups)

    def _warn_gitops(self, view: WorkloadView, desired: Desired) -> None:
        """A GitOps tool sees geopin's template edit as drift: say so once per workload."""
        key = (view.uid, "gitops")
        if view.gitops is None or not desired.originals or key in self._reported_invalid:
            return
        self._reported_invalid.add(key)
        self.post_event(
            view,
            "Warning",
            "GitOpsDriftRisk",
            f"managed by {view.gitops}: geopin's image rewrite (field manager geopin) will show as drift; "
            "ignore it (Argo CD ignoreDifferences managedFieldsManagers: [geopin]) or use mode: Admission",
            once=True,
        )

    def _managing(self, view: WorkloadView, desired: Desired) -> PolicySnapshot | None:
        """The policy whose images the workload's record holds (the one whose pull secrets matter)."""
        for snapshot in self.book.snapshots():
            if any(snapshot.policy.manages_host(image_host(v)) for v in desired.originals.values()):
                return snapshot
        return None

    def _referenced_elsewhere(self, written: WorkloadView) -> Callable[[str], bool]:
        """Is a Secret name still in some workload's imagePullSecrets (the one just written excluded)?"""
        others = [v for v in self.all_views() if v.namespace == written.namespace and v.ref != written.ref]
        return lambda name: any(name in v.pull_secrets for v in others)

    def _policy_label(self, view: WorkloadView, desired: Desired) -> str:
        for snapshot in self.book.snapshots():
            if desired.originals and any(
                snapshot.policy.manages_host(image_host(v)) for v in desired.originals.values()
            ):
                return snapshot.policy.name
            if records_policy(view, snapshot.policy):
                return snapshot.policy.name
        return ""

    def _announce(self, view: WorkloadView, desired: Desired, policy: str) -> None:
        changed = changed_containers(view, desired)
        result = "pinned" if desired.originals else "restored"
        metrics.WORKLOAD_REWRITES.labels(policy, view.kind, result).inc()
        if not changed:
            return
        moves = ", ".join(f"{c.key}: {c.image} -> {desired.images[c.key]}" for c in changed)
        if desired.originals:
            self.post_event(view, "Normal", "Repinned", f"pinned to {desired.pinned_region}: {moves}")
        else:
            self.post_event(view, "Normal", "Restored", f"original images restored: {moves}")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
) -> dict[str, Any]:
    """A metav1.Condition whose lastTransitionTime moves only when its status does."""
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    changed = before is None or before.get("status") != value
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now_iso() if changed or before is None else before.get("lastTransitionTime"),
    }
