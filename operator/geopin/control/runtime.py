"""What the handlers share: the cluster cache, the policy book, and the leader's components.

``Runtime`` is where the control layer is put together, each part given what it uses when it is
built. Event handlers call its methods; only the leader (or a replica running alone) starts the
workers, the probe loops and the status loop (:meth:`Runtime.lead`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import httpx

from geopin.control.admission_policies import MutatingPolicySync
from geopin.control.book import PolicyBook, PolicyEntry
from geopin.control.changes import Changes
from geopin.control.monitors import Monitors
from geopin.control.node_credentials import NodeCredentials
from geopin.control.notices import WorkloadNotices
from geopin.control.reconciler import Reconciler
from geopin.control.reporting import PolicyGauges, StatusReporter
from geopin.control.rescue import PodRescuer
from geopin.core.config import RunConfig
from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES
from geopin.core.nodes import NodeInfo
from geopin.core.redirect import PodMove
from geopin.core.workloads import WorkloadRef, WorkloadView
from geopin.io import metrics
from geopin.io.cache import ClusterCache
from geopin.io.event_backlog import EventBacklog
from geopin.io.kube import KubeAPI

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        config: RunConfig,
        kube: KubeAPI,
        cluster: ClusterCache | None = None,
        *,
        mutating_policies: MutatingPolicySync | None = None,
        probe_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        self.cluster = cluster if cluster is not None else ClusterCache()
        self.changes = Changes()
        idle = asyncio.Event()  # set while the workers have nothing to do
        self.events = EventBacklog(kube, idle)
        self.monitors = Monitors(
            kube,
            self.cluster,
            self.events,
            self.changes,
            arm_endpoint=config.arm_endpoint,
            probe_transport=probe_transport,
        )
        excluded = DEFAULT_EXCLUDED_NAMESPACES | {config.operator_namespace}
        # nodeImageCheck: the nodes at risk and the keys of workloads' pull secrets
        self.node_credentials = NodeCredentials(kube, self.cluster.nodes, config.node_image_credential_fix)
        self.book = PolicyBook(self.monitors, self.cluster.region, excluded, self.node_credentials)
        self.notices = WorkloadNotices(self.events)
        self.reconciler = Reconciler(
            kube,
            self.book,
            self.cluster,
            self.notices,
            self.changes,
            idle,
            images=self.monitors,
            secrets=self.node_credentials,
            workers=config.workers,
        )
        self.rescuer = PodRescuer(kube, self.book, self.cluster, self.events)
        self.gauges = PolicyGauges()
        self.mutating_policies = mutating_policies
        self.reporter = StatusReporter(
            kube,
            self.book,
            self.cluster,
            self.reconciler,
            self.monitors,
            self.changes,
            self.events,
            self.gauges,
            mutating_policies,
            self.node_credentials,
        )
        self.leading = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the event handlers report ------------------------------------------------------------

    def workload_changed(self, view: WorkloadView, resource_version: str | None) -> None:
        kept = self.cluster.workloads.changes
        self.cluster.upsert_workload(view, resource_version)
        self.reconciler.observe(view)
        self._recount_if_changed(kept)

    def workload_gone(self, ref: WorkloadRef, uid: str, resource_version: str | None) -> None:
        kept = self.cluster.workloads.changes
        self.cluster.workloads.discard(ref, resource_version)
        self.notices.forget(uid)
        self._recount_if_changed(kept)

    def _recount_if_changed(self, kept: int) -> None:
        """The status counts what the cache holds. A write of ours wakes the status loop when the patch
        returns, and its watch event may land after that pass: the event must wake it again, or the
        counts lag till the next resync. A status-only event (a rollout's replica counts) changes
        nothing geopin keeps and costs no pass."""
        if self.cluster.workloads.changes != kept:
            self.changes.touch()

    def namespace_changed(self, name: str, resource_version: str | None, labels: Mapping[str, str] | None) -> None:
        """A namespace's labels (None: deleted); policies' namespaceSelectors may select differently."""
        if labels is None:
            self.cluster.namespaces.discard(name, resource_version)
        else:
            self.cluster.namespaces.upsert(name, resource_version, dict(labels))
        self.changes.touch()

    def node_changed(self, name: str, resource_version: str | None, node: NodeInfo | None) -> None:
        """A node (None: deleted). A new region, node image or cordon re-decides the policies (the status
        loop does the work); a node's heartbeat changes nothing geopin keeps and costs no pass."""
        nodes = self.cluster.nodes
        region = self.cluster.region()
        if nodes.discard(name, resource_version) if node is None else nodes.upsert(name, resource_version, node):
            if self.cluster.region() != region:
                logger.info("the cluster's region is now %s", self.cluster.region())
            self.changes.touch()

    async def policy_applied(self, entry: PolicyEntry) -> None:
        """A new or edited policy: probe it (leader), queue what it changes."""
        self.book.upsert(entry)
        await self.monitors.ensure(entry)
        queued = self.reconciler.enqueue_if_needed(self.cluster.views())
        self.changes.touch()
        logger.info("policy %s applied: %d workloads queued", entry.name, queued)

    async def policy_forgotten(self, name: str) -> None:
        """The policy is deleted and every workload restored."""
        self.book.remove(name)
        await self.monitors.forget(name)
        self.gauges.forget(name)

    def pull_failed(self, message: str, reason: str, namespace: str = "", pod: str = "") -> None:
        for policy, region in self.monitors.pull_failed(message):
            logger.info("policy %s: a pull from %s failed (%s); probing it now", policy, region, reason)
        if pod:
            self.rescuer.pull_failed(namespace, pod)

    def pod_admitted(self, move: PodMove, owner: WorkloadView | None) -> None:
        """The webhook pinned a new Pod to another replica than its template's (strategy: Redirect)."""
        metrics.PODS_REDIRECTED.labels(move.policy, move.from_region, move.to_region).inc()
        if self.leading and owner is not None:  # every replica answers admission; only the leader speaks
            self.notices.pod_redirected(owner, move)

    # -- leadership: only the leader probes and writes ----------------------------------------------

    async def lead(self) -> None:
        """Start probing and writing: this replica leads (or runs alone). One policy's fault stays its own."""
        self.leading = True
        await self.reconciler.start()
        await self.rescuer.start()
        self.events.start()
        await self.monitors.start(list(self.book.entries.values()))
        self._tasks = [
            asyncio.create_task(self.reporter.run(), name="geopin-status"),
            asyncio.create_task(self._repoint(), name="geopin-repoint"),
        ]
        # Finish whatever a previous leader left half done (level-based: only divergent workloads).
        queued = self.reconciler.enqueue_if_needed(self.cluster.views())
        logger.info("leading: %d policies, %d workloads queued", len(self.monitors.loops), queued)

    async def unlead(self) -> None:
        """Stop probing and writing (leadership lost, or shutting down); every part is stopped whatever fails."""
        self.leading = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("workers", self.reconciler.stop),
            ("rescue workers", self.rescuer.stop),
            ("Events", self.events.stop),
            ("probe loops", self.monitors.stop),
        ]
        for what, stop in stops:
            try:
                await stop()
            except Exception:
                logger.exception("stopping the %s failed", what)

    async def _repoint(self) -> None:
        """A policy's usable replicas changed: repoint what must move, now."""
        while True:
            await self.changes.usable.wait()
            policies = self.changes.take_usable()
            queued = self.reconciler.enqueue_if_needed(self.cluster.views())
            self.notices.switched()
            self.rescuer.replicas_changed()
            for policy in sorted(policies):
                if (entry := self.book.entries.get(policy)) is not None:
                    self.reporter.decided(entry)
                loop = self.monitors.loops.get(policy)
                usable = sorted(loop.usable or ()) if loop is not None else []
                logger.info("policy %s: usable replicas %s: %d workloads queued", policy, usable, queued)
