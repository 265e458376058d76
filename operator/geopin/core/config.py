"""Settings of one operator process (``geopin run``), as a dataclass in Kopf's style."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from geopin.core.nodes import DEFAULT_CREDENTIAL_FIX


@dataclass(frozen=True)
class RunConfig:
    kubeconfig: str | None = None  # None: in-cluster service account, else $KUBECONFIG / ~/.kube/config
    operator_namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE", "geopin-system"))
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    bind_address: str = "0.0.0.0"  # where metrics, health and the webhook listen (a Pod IP with hostNetwork)
    metrics_port: int = 8080  # 0 disables the metrics server
    metrics_secure: bool = False  # HTTPS, and only callers the API server authorizes for GET /metrics
    metrics_cert_dir: str | None = None  # tls.crt/tls.key for secure metrics; None: self-signed at start-up
    health_port: int = 8081  # Kopf's liveness endpoint; 0 disables it
    workers: int = 8  # concurrent workload writes (and API connections)
    arm_endpoint: str | None = None  # Azure Resource Manager URL; None: the registry's cloud
    admission_mechanism: str = "auto"  # auto (MutatingAdmissionPolicy where served) | policy | webhook
    webhook_port: int = 0  # admission webhook (Admission mode) HTTPS port; 0: not served
    webhook_cert_dir: str | None = None  # tls.crt/tls.key (and ca.crt) mounted; None: self-signed at start-up
    webhook_cert_secret: str | None = None  # namespace/name of a Secret every replica serves (made when absent)
    webhook_config: str | None = None  # keep this MutatingWebhookConfiguration (and its caBundle) in step
    webhook_url: str | None = None  # how the API server reaches the webhook (else webhook_service)
    webhook_service: str = "geopin-system/geopin:443"  # namespace/name:port of the webhook Service
    webhook_failure_policy: str = "Ignore"  # Ignore (Pods admitted unchanged when geopin is down) | Fail
    webhook_timeout_seconds: int = 2  # how long the API server waits for the webhook (1..30)
    leader_election: bool = False  # with several replicas: only the Lease holder probes and writes
    lease_name: str = "geopin"  # coordination.k8s.io/v1 Lease in the operator's namespace
    # The first AKS node image whose kubelet credential provider covers *.*.geo.azurecr.io (nodeImageCheck).
    node_image_credential_fix: str = DEFAULT_CREDENTIAL_FIX
    log_format: str = "text"  # text | json
    verbose: bool = False
