"""What the handlers share: geopin's caches, the policy book, the reconciler and, while leading, the monitors."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from geopin.control.admission_policies import MutatingPolicySync
from geopin.control.engine import PolicyBook, PolicyEntry, Reconciler, WorkloadRef
from geopin.control.monitor import PolicyMonitor
from geopin.control.reporting import StatusReporter, policy_ref
from geopin.core.config import RunConfig
from geopin.core.endpoints import arm_endpoint
from geopin.core.health import ReplicaState, Transition, preference_order
from geopin.core.policy import Policy
from geopin.core.workloads import KINDS, PATCH_KINDS, WorkloadView, tracked, view_of
from geopin.io.cache import ObjectCache
from geopin.io.images import ImageCache
from geopin.io.kube import REGION_LABEL, Kube
from geopin.io.leader import LeaderElector
from geopin.io.probes import RegistryClient, credentials_from_dockerconfig
from geopin.io.webhook import WebhookServer

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the handlers share, kept in Kopf's memo as ``memo.runtime``."""

    config: RunConfig
    kube: Kube
    book: PolicyBook
    reconciler: Reconciler
    workloads: ObjectCache[WorkloadRef, WorkloadView] = field(default_factory=ObjectCache)
    namespaces: ObjectCache[str, dict[str, str]] = field(default_factory=ObjectCache)
    nodes: ObjectCache[str, str] = field(default_factory=ObjectCache)
    monitors: dict[str, PolicyMonitor] = field(default_factory=dict)
    leading: bool = False
    elector: LeaderElector | None = None
    webhook: WebhookServer | None = None
    mutating_policies: MutatingPolicySync | None = None  # Admission mode through MutatingAdmissionPolicy
    reporter: StatusReporter | None = None  # while leading
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def view(self, ref: WorkloadRef) -> WorkloadView | None:
        return self.workloads.get(ref)

    def views(self) -> list[WorkloadView]:
        return self.workloads.values()

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return self.namespaces.get(namespace)

    def all_namespace_labels(self) -> dict[str, dict[str, str]]:
        return dict(self.namespaces.items())

    async def prime(self) -> None:
        """LIST nodes, namespaces and every workload kind once, before Kopf's watches start."""
        began = time.monotonic()
        async for item in self.kube.list_all("/api/v1/nodes"):
            labels = item["metadata"].get("labels") or {}
            self.nodes.upsert(
                item["metadata"]["name"], item["metadata"].get("resourceVersion"), labels.get(REGION_LABEL, "")
            )
        async for item in self.kube.list_all("/api/v1/namespaces"):
            meta = item["metadata"]
            self.namespaces.upsert(meta["name"], meta.get("resourceVersion"), dict(meta.get("labels") or {}))
        for name in PATCH_KINDS:
            kind = KINDS[name]
            prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
            async for item in self.kube.list_all(f"{prefix}/{kind.plural}"):
                if tracked(kind, item):
                    view = view_of(kind, item)
                    self.workloads.upsert(view.ref, item["metadata"].get("resourceVersion"), view)
        logger.info(
            "cache primed in %.1fs: %d workloads, %d namespaces, %d nodes",
            time.monotonic() - began,
            len(self.workloads),
            len(self.namespaces),
            len(self.nodes),
        )

    def usable(self, policy: str) -> frozenset[str] | None:
        """The leader's own verdict; a standby reads the leader's from the status (for admission)."""
        if self.leading:
            monitor = self.monitors.get(policy)
            return monitor.eligible if monitor is not None else None
        entry = self.book.entries.get(policy)
        published = entry.observed_status.get("usableRegions") if entry is not None else None
        return frozenset(published) if isinstance(published, list) else None

    def effective(self, name: str, policy: Policy) -> Policy:
        monitor = self.monitors.get(name)
        return monitor.effective(policy) if monitor is not None else policy

    def image_cache(self, policy: str) -> ImageCache | None:
        monitor = self.monitors.get(policy)
        return monitor.images if monitor is not None else None

    async def resolve_images(self, policy: str, pairs: list[tuple[str, str]]) -> None:
        """Registry lookups a decision needs; digests are resolved at the first usable replica."""
        monitor = self.monitors.get(policy)
        entry = self.book.entries.get(policy)
        if monitor is None or entry is None or entry.policy is None:
            return
        usable = monitor.eligible or frozenset()
        via = next(
            (r for r in preference_order(entry.policy, self.book.cluster_region(entry.policy)) if r in usable), ""
        )
        await monitor.images.resolve(entry.policy, monitor.client, pairs, via)

    async def refresh_images(self) -> None:
        """Re-ask the registries for expired manifest answers; repoint what a new answer frees."""
        changed = False
        for name, monitor in list(self.monitors.items()):
            entry = self.book.entries.get(name)
            if entry is None or entry.policy is None:
                continue
            usable = monitor.eligible or frozenset()
            order = preference_order(entry.policy, self.book.cluster_region(entry.policy))
            via = next((region for region in order if region in usable), "")
            changed |= await monitor.images.refresh_stale(self.effective(name, entry.policy), monitor.client, via)
        if changed:
            self.reconciler.enqueue_if_needed(self.views())
            self.reconciler.touch()

    def usable_changed(self, policy: str) -> None:
        """A policy's usable replicas changed: repoint what must move, now."""
        queued = self.reconciler.enqueue_if_needed(self.views())
        self.reconciler.touch()
        if self.reporter is not None and (entry := self.book.entries.get(policy)) is not None:
            self.reporter.decided(entry)
        usable = sorted(self.usable(policy) or ())
        logger.info("policy %s: usable replicas %s: %d workloads queued", policy, usable, queued)

    # -- leadership: only the leader probes and writes ------------------------------------------

    async def lead(self) -> None:
        """Start probing and writing: this replica leads (or runs alone)."""
        self.leading = True
        await self.reconciler.start()
        self.reporter = StatusReporter(self)
        self.tasks.append(asyncio.create_task(self.reporter.run(), name="geopin-status"))
        for entry in list(self.book.entries.values()):
            if entry.policy is not None:
                await self.ensure_monitor(entry)
        # Finish whatever a previous leader left half done (level-based: only divergent workloads).
        queued = self.reconciler.enqueue_if_needed(self.views())
        logger.info("leading: %d policies, %d workloads queued", len(self.monitors), queued)

    async def unlead(self) -> None:
        """Stop probing and writing (leadership lost, or shutting down)."""
        self.leading = False
        self.reporter = None
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.reconciler.stop()
        monitors, self.monitors = list(self.monitors.values()), {}
        for monitor in monitors:
            await monitor.stop()

    async def registry_client(self, policy: Policy) -> RegistryClient:
        """A probe client with the policy's TLS trust and credentials (read from the Secret each time)."""
        credentials = None
        ref = policy.credentials.secret_ref
        if ref is not None:
            data = await self.kube.get_secret_data(ref.namespace, ref.name)
            if data is None:
                logger.warning(
                    "policy %s: credentials secret %s/%s not found; probing anonymously",
                    policy.name,
                    ref.namespace,
                    ref.name,
                )
            else:
                credentials = credentials_from_dockerconfig(data, policy.registry)
        aad_credential = None
        if policy.credentials.azure_workload_identity:
            from azure.identity.aio import DefaultAzureCredential

            aad_credential = DefaultAzureCredential()
        return RegistryClient(
            scheme=policy.probe.scheme,
            timeout_seconds=policy.probe.timeout_seconds,
            ca_bundle=policy.probe.ca_bundle,
            credentials=credentials,
            aad_credential=aad_credential,
        )

    async def ensure_monitor(self, entry: PolicyEntry) -> None:
        """Start the policy's probe loop, or hand it the new spec (known replicas keep their health)."""
        if entry.policy is None or not self.leading:
            return
        client = await self.registry_client(entry.policy)
        monitor = self.monitors.get(entry.name)
        if monitor is not None:
            if (old := monitor.update(entry.policy, client)) is not None:
                await old.aclose()
            return

        async def on_transition(transition: Transition) -> None:
            if transition.previous is ReplicaState.UNKNOWN and transition.current is ReplicaState.HEALTHY:
                return  # a first verdict (start-up, a new replica), not a recovery
            unhealthy = transition.current in (ReplicaState.UNHEALTHY, ReplicaState.EXCLUDED)
            await self.kube.post_event(
                policy_ref(entry),
                "Warning" if unhealthy else "Normal",
                "ReplicaUnhealthy" if unhealthy else "ReplicaRecovered",
                f"{transition.region}: {transition.previous} -> {transition.current}: {transition.message}"[:1024],
            )

        discovery = None
        if entry.policy.azure is not None:
            from geopin.io.azure import ArmDiscovery

            base_url = self.config.arm_endpoint or arm_endpoint(entry.policy.registry)
            discovery = ArmDiscovery(entry.policy.azure, entry.policy.registry, base_url=base_url)
        monitor = PolicyMonitor(
            entry.policy,
            client,
            on_change=lambda: self.usable_changed(entry.name),
            on_transition=on_transition,
            discovery=discovery,
        )
        monitor.restore(entry.observed_status)
        self.monitors[entry.name] = monitor
        monitor.start()

    def node_regions(self) -> list[str | None]:
        return list(self.nodes.values())
