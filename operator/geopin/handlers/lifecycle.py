"""Operator start-up and shutdown: settings, the API client, the reconciler, metrics."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from geopin.control.admission_policies import MutatingPolicySync, mutating_policies_served
from geopin.control.engine import PolicyBook, Reconciler
from geopin.control.runtime import Runtime
from geopin.core.config import RunConfig
from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES
from geopin.io import metrics
from geopin.io.kube import POLICY_GROUP, Kube, load_api_client, load_configuration
from geopin.io.leader import LeaderElector
from geopin.io.webhook import WebhookServer, webhook_configuration

logger = logging.getLogger(__name__)

FINALIZER = "geopin.io/restore"


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
    book.node_risk = runtime.node_risk
    book.pull_secret_keys = runtime.pull_secrets.get
    runtime.reconciler = Reconciler(
        kube,
        book,
        runtime.view,
        runtime.namespace_labels,
        resolve=runtime.resolve_images,
        read_pull_secrets=runtime.read_pull_secrets,
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
