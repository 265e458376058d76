"""Operator start-up and shutdown: settings, the API client, the reconciler, metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from geopin import metrics
from geopin.config import RunConfig
from geopin.decisions import DEFAULT_EXCLUDED_NAMESPACES
from geopin.engine import PolicyBook, Reconciler, WorkloadRef
from geopin.health import preference_order
from geopin.images import ImageCache
from geopin.kube import Kube, load_api_client, load_configuration
from geopin.monitor import PolicyMonitor
from geopin.policy import Policy
from geopin.reporting import StatusReporter
from geopin.workloads import WorkloadView

logger = logging.getLogger(__name__)

FINALIZER = "geopin.io/restore"


@dataclass
class Runtime:
    """Everything the handlers share, kept in Kopf's memo as ``memo.runtime``."""

    config: RunConfig
    kube: Kube
    book: PolicyBook
    reconciler: Reconciler
    indices: dict[str, Any] = field(default_factory=dict)
    monitors: dict[str, PolicyMonitor] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def view(self, ref: WorkloadRef) -> WorkloadView | None:
        store = self.indices["workload_views"].get(ref)
        return next(iter(store), None) if store is not None else None

    def views(self) -> list[WorkloadView]:
        index = self.indices["workload_views"]
        return [view for key in list(index) for view in index.get(key, ())]

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        store = self.indices["namespace_labels"].get(namespace)
        return next(iter(store), None) if store is not None else None

    def all_namespace_labels(self) -> dict[str, dict[str, str]]:
        index = self.indices["namespace_labels"]
        return {key: labels for key in list(index) for labels in index.get(key, ())}

    def usable(self, policy: str) -> frozenset[str] | None:
        monitor = self.monitors.get(policy)
        return monitor.eligible if monitor is not None else None

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

    def usable_changed(self, policy: str) -> None:
        """A policy's usable replicas changed: repoint what must move, now."""
        queued = self.reconciler.enqueue_if_needed(self.views())
        self.reconciler.touch()
        usable = sorted(self.usable(policy) or ())
        logger.info("policy %s: usable replicas %s: %d workloads queued", policy, usable, queued)

    def node_regions(self) -> list[str | None]:
        index = self.indices["node_regions"]
        return [region for key in list(index) for region in index.get(key, ())]


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


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: RunConfig = memo.config
    # geopin's own bookkeeping on its own CRD uses geopin.io keys; workloads are only watched through
    # indices and event handlers, for which Kopf stores nothing on the objects.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="geopin.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="geopin.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.scanning.disabled = True  # no cluster-wide CRD discovery: fewer permissions
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60

    kube = Kube(load_api_client(config.kubeconfig, pool_size=config.workers), concurrency=config.workers)
    book = PolicyBook(excluded_namespaces=DEFAULT_EXCLUDED_NAMESPACES | {config.operator_namespace})
    runtime = Runtime(config=config, kube=kube, book=book, reconciler=None)  # type: ignore[arg-type]
    runtime.indices = {name: kwargs[name] for name in ("workload_views", "namespace_labels", "node_regions")}
    book.node_regions = runtime.node_regions
    book.usable = runtime.usable
    book.images = runtime.image_cache
    book.effective = runtime.effective
    runtime.reconciler = Reconciler(
        kube, book, runtime.view, runtime.namespace_labels, resolve=runtime.resolve_images, workers=config.workers
    )
    await runtime.reconciler.start()
    memo.runtime = runtime
    runtime.tasks.append(asyncio.create_task(StatusReporter(runtime).run(), name="geopin-status"))
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    logger.info("geopin started: %d workers, metrics on :%s", config.workers, config.metrics_port or "off")


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        for task in runtime.tasks:
            task.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        await runtime.reconciler.stop()
        for monitor in runtime.monitors.values():
            await monitor.stop()
        runtime.kube.close()
