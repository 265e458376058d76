"""Operator start-up and shutdown: settings, the API client, the reconciler, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from geopin import metrics
from geopin.admission_policies import MutatingPolicySync, mutating_policies_served
from geopin.cache import ObjectCache
from geopin.config import RunConfig
from geopin.decisions import DEFAULT_EXCLUDED_NAMESPACES
from geopin.endpoints import arm_endpoint
from geopin.engine import PolicyBook, PolicyEntry, Reconciler, WorkloadRef
from geopin.handlers.workloads import tracked
from geopin.health import ReplicaState, Transition, preference_order
from geopin.images import ImageCache
from geopin.kube import POLICY_GROUP, REGION_LABEL, Kube, load_api_client, load_configuration
from geopin.leader import LeaderElector
from geopin.monitor import PolicyMonitor
from geopin.policy import Policy
from geopin.probes import RegistryClient, credentials_from_dockerconfig
from geopin.reporting import StatusReporter, policy_ref
from geopin.webhook import WebhookServer, webhook_configuration
from geopin.workloads import KINDS, PATCH_KINDS, WorkloadView, view_of

logger = logging.getLogger(__name__)

FINALIZER = "geopin.io/restore"


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
        usable = sorted(self.usable(policy) or ())
        logger.info("policy %s: usable replicas %s: %d workloads queued", policy, usable, queued)

    # -- leadership: only the leader probes and writes ------------------------------------------

    async def lead(self) -> None:
        """Start probing and writing: this replica leads (or runs alone)."""
        self.leading = True
        await self.reconciler.start()
        self.tasks.append(asyncio.create_task(StatusReporter(self).run(), name="geopin-status"))
        for entry in list(self.book.entries.values()):
            if entry.policy is not None:
                await self.ensure_monitor(entry)
        # Finish whatever a previous leader left half done (level-based: only divergent workloads).
        queued = self.reconciler.enqueue_if_needed(self.views())
        logger.info("leading: %d policies, %d workloads queued", len(self.monitors), queued)

    async def unlead(self) -> None:
        """Stop probing and writing (leadership lost, or shutting down)."""
        self.leading = False
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
            from geopin.azure import ArmDiscovery

            base_url = self.config.arm_endpoint or arm_endpoint(entry.policy.registry)
            discovery = ArmDiscovery(entry.policy.azure, entry.policy.registry, base_url=base_url)
        monitor = PolicyMonitor(
            entry.policy,
            client,
            on_change=lambda: self.usable_changed(entry.name),
            on_transition=on_transition,
            discovery=discovery,
        )
        self.monitors[entry.name] = monitor
        monitor.start()

    def node_regions(self) -> list[str | None]:
        return list(self.nodes.values())


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Kopf connects exactly as geopin's own client does (one source of credentials)."""
    config: RunConfig = memo.config
    configuration = load_configuration(config.kubeconfig)
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _space, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class PolicyDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's diff-base, kept for geopin's own policies only.

    Kopf builds (deep-copies) and looks up a diff-base for every watch event of every resource, but
    only change and deletion handlers use it, and only the RegistryPolicy has those. For workloads,
    with event handlers alone, it was about a tenth of the event loop's time during a failover.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if not _is_policy(body):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) if _is_policy(body) else None


def _is_policy(body: kopf.Body) -> bool:
    return str(body.get("apiVersion", "")).startswith(f"{POLICY_GROUP}/")


WATCH_PAGE_SIZE = 500
PULL_EVENT_SELECTOR = "type=Warning,involvedObject.kind=Pod"
WORKER_IDLE_SECONDS = 1.0


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: RunConfig = memo.config
    # geopin's own bookkeeping on its own CRD uses geopin.io keys; workloads are only watched through
    # event handlers, for which Kopf stores nothing on the objects.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="geopin.io")
    settings.persistence.diffbase_storage = PolicyDiffBaseStorage(prefix="geopin.io", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.scanning.disabled = True  # no cluster-wide CRD discovery: fewer permissions
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # Memory at 10,000 workloads (bench/steady.py): Kopf LISTs a whole kind in one response unless
    # paged, and each per-object worker keeps its last event's body while it idles. Pages of 500 and
    # a 1 s idle timeout keep the start-up peak, and so the RSS that stays after it, lower.
    settings.watching.chunk_size = WATCH_PAGE_SIZE
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Events are the busiest kind in any cluster, and geopin's own Normal ones (one per repinned
    # workload) would come back to it. pull_errors.py needs the kubelet's "Failed to pull image",
    # a Warning on the Pod for every failed attempt ("Back-off pulling image" is Normal, a repeat).
    settings.watching.field_selectors["", "v1", "events"] = PULL_EVENT_SELECTOR

    kube = Kube(load_api_client(config.kubeconfig, pool_size=config.workers), concurrency=config.workers)
    book = PolicyBook(excluded_namespaces=DEFAULT_EXCLUDED_NAMESPACES | {config.operator_namespace})
    runtime = Runtime(config=config, kube=kube, book=book, reconciler=None)  # type: ignore[arg-type]
    book.node_regions = runtime.node_regions
    book.usable = runtime.usable
    book.images = runtime.image_cache
    book.effective = runtime.effective
    runtime.reconciler = Reconciler(
        kube,
        book,
        runtime.view,
        runtime.namespace_labels,
        resolve=runtime.resolve_images,
        all_views=runtime.views,
        workers=config.workers,
    )
    await runtime.prime()
    memo.runtime = runtime
    if config.leader_election:
        runtime.elector = LeaderElector(
            kube,
            config.operator_namespace,
            config.lease_name,
            on_started_leading=runtime.lead,
            on_stopped_leading=runtime.unlead,
        )
        runtime.elector.start()
    else:
        await runtime.lead()
    if config.admission_mechanism != "webhook":
        if await mutating_policies_served(kube):
            runtime.mutating_policies = MutatingPolicySync(kube, config.operator_namespace)
            logger.info("Admission mode through MutatingAdmissionPolicy (the API server serves it)")
        elif config.admission_mechanism == "policy":
            logger.error("MutatingAdmissionPolicy is not served by this API server; using the webhook")
    if config.webhook_port:
        runtime.webhook = WebhookServer(
            config.webhook_port,
            book.snapshots,
            runtime.namespace_labels,
            cert_dir=config.webhook_cert_dir,
            hosts=webhook_hosts(config),
        )
        await runtime.webhook.start()
        if config.webhook_config and runtime.mutating_policies is None:
            await ensure_webhook_configuration(kube, config, runtime.webhook.ca_pem)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    logger.info("geopin started: %d workers, metrics on :%s", config.workers, config.metrics_port or "off")


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        if runtime.elector is not None:
            await runtime.elector.stop()  # steps down and releases the Lease for a fast take-over
        if runtime.leading:
            await runtime.unlead()
        if runtime.webhook is not None:
            await runtime.webhook.stop()
        runtime.kube.close()


def webhook_hosts(config: RunConfig) -> tuple[str, ...]:
    """The names the serving certificate must carry: the Service's DNS names, or the URL's host."""
    if config.webhook_url:
        host = config.webhook_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        return (host, "localhost", "127.0.0.1")
    namespace, _, rest = config.webhook_service.partition("/")
    name = rest.split(":", 1)[0]
    return (f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}")


async def ensure_webhook_configuration(kube: Kube, config: RunConfig, ca_pem: bytes) -> None:
    """Create or update the MutatingWebhookConfiguration so the API server trusts this certificate."""
    assert config.webhook_config is not None
    service = None
    if not config.webhook_url:
        namespace, _, rest = config.webhook_service.partition("/")
        name, _, port = rest.partition(":")
        service = (namespace, name, int(port or 443))
    body = webhook_configuration(
        config.webhook_config,
        ca_pem,
        url=config.webhook_url,
        service=service,
        operator_namespace=config.operator_namespace,
    )
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{config.webhook_config}"
    result = await kube.create_or_replace(path, body)
    logger.info("webhook: MutatingWebhookConfiguration %s %s", config.webhook_config, result)
