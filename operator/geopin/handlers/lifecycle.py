"""Operator start-up and shutdown: Kopf's settings, the API clients, leader election, webhook, metrics."""

from __future__ import annotations

import logging
import socket
from typing import Any

import kopf

from geopin.control.admission_policies import MutatingPolicySync, mutating_policies_served
from geopin.control.runtime import Runtime
from geopin.core.config import RunConfig
from geopin.core.crd import GROUP
from geopin.io import metrics
from geopin.io.access_review import AccessReviewer
from geopin.io.certs import shared_certificate
from geopin.io.kube import Kube, load_api_client, load_configuration
from geopin.io.leader import LeaderElector
from geopin.io.metrics_server import SecureMetricsServer
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
    return str(body.get("apiVersion", "")).startswith(f"{GROUP}/")


WATCH_PAGE_SIZE = 500
PULL_EVENT_SELECTOR = "type=Warning,involvedObject.kind=Pod"
WORKER_IDLE_SECONDS = 1.0


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: RunConfig = memo.config
    configure_kopf(settings)
    # What every replica writes (its Lease, the webhook configuration) goes through a client of its
    # own; everything else only the leader writes, through a client that refuses once it cannot be sure.
    replica_kube = Kube(load_api_client(config.kubeconfig, pool_size=2), concurrency=2, event_concurrency=1)
    elector = None
    if config.leader_election:
        elector = LeaderElector(replica_kube, config.operator_namespace, config.lease_name)
    may_write = elector.holds if elector is not None else None
    kube = Kube(
        load_api_client(config.kubeconfig, pool_size=config.workers), concurrency=config.workers, may_write=may_write
    )
    memo.kubes = (replica_kube, kube)
    runtime = Runtime(config, kube, mutating_policies=await _mutating_policies(config, kube))
    runtime.book.no_redirect_path = no_redirect_path(config, runtime.mutating_policies is not None)
    if runtime.mutating_policies is not None:
        runtime.book.redirect_path = "the API server's MutatingAdmissionPolicy"
    if runtime.book.no_redirect_path is not None:
        logger.info("strategy: Redirect falls back to paced Repoint: %s", runtime.book.no_redirect_path)
    await runtime.cluster.prime(kube)
    memo.runtime = runtime
    if elector is not None:
        memo.elector = elector
        elector.start(on_started_leading=runtime.lead, on_stopped_leading=runtime.unlead)
    else:
        await runtime.lead()
    if config.webhook_port:
        memo.webhook = await _serve_webhook(config, runtime, replica_kube)
    if config.metrics_port and config.metrics_secure:
        # Every replica answers scrapes, so its reviews go through the client every replica may use.
        memo.metrics_server = SecureMetricsServer(
            config.metrics_port,
            AccessReviewer(lambda path, body: replica_kube.request(path, "POST", body)),
            cert_dir=config.metrics_cert_dir,
            hosts=(socket.gethostname(), "localhost", "127.0.0.1"),  # a self-signed one: the Pod's name
            address=config.bind_address,
        )
        await memo.metrics_server.start()
    elif config.metrics_port:
        metrics.serve(config.metrics_port, config.bind_address)
    logger.info(
        "geopin started: %d workers, metrics on :%s%s",
        config.workers,
        config.metrics_port or "off",
        " (HTTPS, authorized)" if config.metrics_port and config.metrics_secure else "",
    )


def configure_kopf(settings: kopf.OperatorSettings) -> None:
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


async def _mutating_policies(config: RunConfig, kube: Kube) -> MutatingPolicySync | None:
    """Admission mode through MutatingAdmissionPolicy where the API server serves it (and it is wanted)."""
    if config.admission_mechanism == "webhook":
        return None
    api_version = await mutating_policies_served(kube)
    if api_version is not None:
        logger.info("Admission mode through MutatingAdmissionPolicy (the API server serves %s)", api_version)
        return MutatingPolicySync(kube, config.operator_namespace, api_version)
    if config.admission_mechanism == "policy":
        logger.error("MutatingAdmissionPolicy is not served by this API server; using the webhook")
    return None


def no_redirect_path(config: RunConfig, admission_policies: bool) -> str | None:
    """Why new Pods cannot be redirected at admission (None: a MutatingAdmissionPolicy redirects them, or
    geopin's webhook sees every new Pod)."""
    if admission_policies:
        return None
    if not config.webhook_port:
        return "geopin serves no admission webhook (geopin run --webhook-port; the chart's webhook.enabled)"
    if not config.webhook_config:
        return "geopin keeps no MutatingWebhookConfiguration in step (geopin run --webhook-config)"
    return None


async def _serve_webhook(config: RunConfig, runtime: Runtime, kube: Kube) -> WebhookServer:
    certificate = None
    if config.webhook_cert_secret and not config.webhook_cert_dir:
        namespace, _, name = config.webhook_cert_secret.partition("/")
        certificate = await shared_certificate(kube, namespace, name, webhook_hosts(config))
    webhook = WebhookServer(
        config.webhook_port,
        runtime.book.snapshots,
        runtime.cluster.namespace_labels,
        cert_dir=config.webhook_cert_dir,
        certificate=certificate,
        hosts=webhook_hosts(config),
        address=config.bind_address,
        owner_of=runtime.cluster.owner_of,
        on_redirect=runtime.pod_admitted,
    )
    await webhook.start()
    if config.webhook_config and runtime.mutating_policies is None:
        await ensure_webhook_configuration(kube, config, webhook.ca_pem)
    return webhook


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    elector: LeaderElector | None = memo.get("elector")
    runtime: Runtime | None = memo.get("runtime")
    webhook: WebhookServer | None = memo.get("webhook")
    if elector is not None:
        await elector.stop()  # steps down and releases the Lease for a fast take-over
    if runtime is not None and runtime.leading:
        await runtime.unlead()
    if webhook is not None:
        await webhook.stop()
    metrics_server: SecureMetricsServer | None = memo.get("metrics_server")
    if metrics_server is not None:
        await metrics_server.stop()
    for kube in memo.get("kubes", ()):
        kube.close()


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
        failure_policy=config.webhook_failure_policy,
        timeout_seconds=config.webhook_timeout_seconds,
    )
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{config.webhook_config}"
    result = await kube.create_or_replace(path, body)
    logger.info("webhook: MutatingWebhookConfiguration %s %s", config.webhook_config, result)
