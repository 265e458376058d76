"""The only writer of workloads: a de-duplicating queue of workload references and a fixed pool of workers.

Whatever the number of workloads, there are ``workers`` tasks and at most that many API calls in
flight. A worker reads the latest view, computes the desired state (pure, from one set of policy
snapshots per attempt), and sends at most one guarded JSON patch; on a conflict it re-reads the
object and computes again, so a user's concurrent edit is never overwritten. Nothing here touches
Kopf, so it can run under any event source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from geopin.control.book import PolicyBook, records_policy
from geopin.control.changes import Changes, wait_for_event
from geopin.control.notices import WorkloadNotices
from geopin.control.pull_secret_sync import PullSecretSync
from geopin.control.repoint_pacer import RepointPacer
from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.references import image_host
from geopin.core.rewrite import Desired, JsonPatch, json_patch, moves_pin
from geopin.core.text import one_line
from geopin.core.workloads import KINDS, Kind, WorkloadRef, WorkloadView, view_of
from geopin.io import metrics
from geopin.io.cache import ClusterCache
from geopin.io.kube import CALL_FAILURES, ApiError, KubeAPI, NotLeading

__all__ = ["ImageResolver", "PullSecretReader", "Reconciler"]

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY = 5.0


class ImageResolver(Protocol):
    async def resolve(self, policy: str, pairs: list[tuple[str, str]]) -> None:
        """Ask the registries what a decision needs: (image, region) manifests, (image, "") digests."""


class PullSecretReader(Protocol):
    async def read(self, refs: list[tuple[str, str]]) -> None:
        """Read the registry keys of these (namespace, name) pull secrets (nodeImageCheck: Enforce)."""


class Reconciler:
    def __init__(
        self,
        kube: KubeAPI,
        book: PolicyBook,
        cluster: ClusterCache,
        notices: WorkloadNotices,
        changes: Changes,
        idle: asyncio.Event,
        *,
        images: ImageResolver | None = None,
        secrets: PullSecretReader | None = None,
        pacer: RepointPacer | None = None,
        workers: int = 8,
        retries: int = 5,
        retry_delay: float = 0.2,
    ) -> None:
        self.kube = kube
        self.book = book
        self.cluster = cluster
        self.notices = notices
        self.changes = changes
        self.images = images
        self.secrets = secrets
        self.pull_secrets = PullSecretSync(kube, notices)
        self.pacer = pacer or RepointPacer()
        self.workers = workers
        self.retries = retries
        self.retry_delay = retry_delay
        # policy → workload → why its write was refused (403), until a write of that workload succeeds
        self.forbidden: dict[str, dict[WorkloadRef, str]] = {}
        self._idle = idle
        self._idle.set()
        self._queue: asyncio.Queue[WorkloadRef] = asyncio.Queue()
        self._pending: set[WorkloadRef] = set()
        self._busy = 0
        self._busy_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # -- queries (pure, cheap: safe to call from event handlers) ------------------------------------

    def plan(self, view: WorkloadView, snapshots: Sequence[PolicySnapshot]) -> Desired | None:
        return plan_workload(view, snapshots, self.cluster.namespace_labels(view.namespace))

    @staticmethod
    def needs_write(view: WorkloadView, desired: Desired | None) -> bool:
        """Would a worker write this workload? (True too when a lookup must decide.)"""
        if desired is None:
            return False
        return desired.undecided or bool(json_patch(KINDS[view.kind], view, desired))

    def refused(self, policy: str) -> str | None:
        """Why the policy's workloads cannot be written (RBAC), for its status; None when they can."""
        refused = self.forbidden.get(policy)
        if not refused:
            return None
        first = next(iter(refused.values()))
        return first if len(refused) == 1 else f"{first} (and {len(refused) - 1} more workloads)"

    @property
    def active(self) -> bool:
        """Workers are running: this replica writes (it leads, or runs alone)."""
        return bool(self._tasks)

    @property
    def idle(self) -> bool:
        return not self._pending and self._busy == 0

    @property
    def busy_for(self) -> float:
        """Seconds since the queue last went from empty to non-empty (0 when idle)."""
        return 0.0 if self.idle else time.monotonic() - self._busy_since

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until the workers have nothing to do, at most ``seconds``; are they idle?"""
        return await wait_for_event(self._idle, seconds)

    # -- commands -------------------------------------------------------------------------------------

    def observe(self, view: WorkloadView) -> None:
        """A watch event: announce what the leader decided, queue a write if one is needed."""
        self.enqueue_if_needed([view])

    def enqueue_if_needed(self, views: Iterable[WorkloadView]) -> int:
        """Queue every workload whose desired state differs from what it holds; the number queued."""
        snapshots = self.book.snapshots()
        count = 0
        for view in views:
            desired = self.plan(view, snapshots)
            if self.active:  # only the leader speaks
                self.notices.decided(view, desired, snapshots, self.cluster.namespace_labels(view.namespace))
            if self.needs_write(view, desired):
                if desired is not None and moves_pin(view, desired):
                    self.pacer.queued(_policy_label(view, desired, snapshots), view.ref)
                self.enqueue(view.ref)
                count += 1
        return count

    def enqueue(self, ref: WorkloadRef) -> None:
        if ref not in self._pending:
            if self.idle:
                self._busy_since = time.monotonic()
                self._idle.clear()
            self._pending.add(ref)
            self._queue.put_nowait(ref)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"geopin-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = asyncio.Queue()  # the next leader queues whatever still diverges
        self._pending.clear()
        self.pacer.clear()
        self._busy = 0
        self._idle.set()

    async def _worker(self) -> None:
        while True:
            ref = await self._queue.get()
            self._pending.discard(ref)
            self._busy += 1
            try:
                await self.reconcile(ref)
            except asyncio.CancelledError:
                raise
            except CALL_FAILURES as e:
                logger.warning("reconciling %s/%s/%s failed; the next resync retries it: %s", *ref, one_line(e))
            except Exception:
                logger.exception("reconciling %s/%s/%s failed; the next resync retries it", *ref)
            finally:
                self.pacer.done(ref)
                self._busy -= 1
                if self.idle:
                    self._idle.set()

    # -- one workload ---------------------------------------------------------------------------------

    async def reconcile(self, ref: WorkloadRef) -> None:
        """Bring one workload to its desired state with at most one successful write."""
        kind = KINDS[ref[0]]
        view = self.cluster.view(ref)
        delay = self.retry_delay
        paced = False
        for attempt in range(1, self.retries + 1):
            if view is None:
                return
            planned = await self._plan(kind, view)
            if planned is None:
                return
            desired, policy, ops = planned
            if not paced and moves_pin(view, desired):
                paced = True
                if await self.pacer.turn(policy, self._repoints_per_second(policy)):
                    # The turn can be seconds away: plan again from what holds now (the replica may be
                    # back, a duplicate of this ref may have written it), so a stale plan is never sent.
                    view = self.cluster.view(ref)
                    if view is None or (planned := await self._plan(kind, view)) is None:
                        return
                    desired, policy, ops = planned
            result = await self._write(kind, view, ops, policy, attempt)
            if result == "applied":
                await self._written(view, desired, policy)
                return
            if result == "gone":
                self.cluster.workloads.discard(view.ref)
                self.notices.forget(view.uid)
                self._allowed(view.ref, policy)
                return
            if result == "conflict":  # someone edited it meanwhile: read it again and decide again
                body = await self.kube.get(kind, view.namespace, view.name)
                view = view_of(kind, body) if body is not None else None
                continue
            if result == "stop":
                return
            await asyncio.sleep(delay)  # backoff between retries of a failed API call, not a sync point
            delay = min(delay * 2, MAX_RETRY_DELAY)
        logger.error(
            "gave up on %s %s/%s after %d attempts; the next resync retries it", kind.kind, *ref[1:], self.retries
        )

    async def _plan(self, kind: Kind, view: WorkloadView) -> tuple[Desired, str, JsonPatch] | None:
        """What to write to ``view`` and for which policy; None when nothing (or nothing decidable yet)."""
        decided = await self._decide(view)
        if decided is None:
            return None
        desired, policy = decided
        ops = json_patch(kind, view, desired)
        return (desired, policy, ops) if ops else None

    async def _decide(self, view: WorkloadView) -> tuple[Desired, str] | None:
        """The desired state (registry lookups done first when it needs them) and the policy it is for."""
        snapshots = self.book.snapshots()
        desired = self.plan(view, snapshots)
        if desired is not None and desired.undecided:
            await self._lookup(desired)
            snapshots = self.book.snapshots()
            desired = self.plan(view, snapshots)
        if desired is None or desired.undecided:
            return None  # still undecidable (the registry did not answer): the next resync retries
        self.notices.awaiting(view, desired)
        desired = await self.pull_secrets.prepare(view, desired, _managing(desired, snapshots))
        return desired, _policy_label(view, desired, snapshots)

    async def _write(
        self, kind: Kind, view: WorkloadView, ops: list[dict[str, object]], policy: str, attempt: int
    ) -> str:
        """One guarded patch: "applied", "conflict", "gone", "retry" (a failed call) or "stop"."""
        where = f"{kind.kind} {view.namespace}/{view.name}"
        try:
            outcome = await self.kube.patch(kind, view.namespace, view.name, ops)
        except NotLeading:
            logger.debug("not patching %s: this replica no longer leads", where)
            return "stop"
        except ApiError as e:
            metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "error").inc()
            if e.status == 403:
                message = f"patching {where} is forbidden (check geopin's RBAC): {e}"
                logger.error(message)
                self.forbidden.setdefault(policy, {})[view.ref] = message
                self.changes.touch()
                return "stop"  # retrying cannot help; the next resync tries again
            logger.warning("patching %s failed (attempt %d): %s", where, attempt, e)
            return "retry"
        except Exception as e:  # a timeout, a dropped connection
            metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "error").inc()
            logger.warning("patching %s failed (attempt %d): %s", where, attempt, str(e) or type(e).__name__)
            return "retry"
        if outcome.result == "conflict":
            metrics.WORKLOAD_REWRITES.labels(policy, kind.kind, "conflict").inc()
        return outcome.result

    def _repoints_per_second(self, policy: str) -> int:
        entry = self.book.entries.get(policy)
        if entry is None or entry.policy is None:
            return 0
        return entry.policy.failover.max_repoints_per_second

    def _allowed(self, ref: WorkloadRef, policy: str) -> None:
        refused = self.forbidden.get(policy)
        if refused is not None and refused.pop(ref, None) is not None:
            if not refused:
                del self.forbidden[policy]
            self.changes.touch()

    async def _written(self, view: WorkloadView, desired: Desired, policy: str) -> None:
        self._allowed(view.ref, policy)
        self.notices.written(view, desired, policy)
        if desired.pull_secrets is not None and set(view.pull_secrets) - set(desired.pull_secrets):
            await self.pull_secrets.collect(view.namespace, self._referenced_elsewhere(view))
        self.changes.touch()

    async def _lookup(self, desired: Desired) -> None:
        """Ask the registries (manifests, digests) and the API server (pull secrets) what a decision needs."""
        lookups: list[Awaitable[None]] = []
        if self.images is not None:
            by_policy: dict[str, list[tuple[str, str]]] = {}
            for policy, image, region in desired.unknown:
                by_policy.setdefault(policy, []).append((image, region))
            lookups.extend(self.images.resolve(policy, pairs) for policy, pairs in by_policy.items())
        if self.secrets is not None and desired.unknown_secrets:
            lookups.append(self.secrets.read(list(desired.unknown_secrets)))
        await asyncio.gather(*lookups)

    def _referenced_elsewhere(self, written: WorkloadView) -> Callable[[str], bool]:
        """Is a Secret name still in some workload's imagePullSecrets (the one just written excluded)?"""
        others = [v for v in self.cluster.views() if v.namespace == written.namespace and v.ref != written.ref]
        return lambda name: any(name in v.pull_secrets for v in others)


def _managing(desired: Desired, snapshots: Iterable[PolicySnapshot]) -> PolicySnapshot | None:
    """The policy whose images the workload's record holds (the one whose pull secrets matter)."""
    for snapshot in snapshots:
        if any(snapshot.policy.manages_host(image_host(v)) for v in desired.originals.values()):
            return snapshot
    return None


def _policy_label(view: WorkloadView, desired: Desired, snapshots: Iterable[PolicySnapshot]) -> str:
    """The policy a write is counted under: the one whose images it pins, or whose record it drops."""
    for snapshot in snapshots:
        if desired.originals and any(snapshot.policy.manages_host(image_host(v)) for v in desired.originals.values()):
            return snapshot.policy.name
        if records_policy(view, snapshot.policy):
            return snapshot.policy.name
    return ""
