"""The mutating admission webhook (Admission mode): an aiohttp HTTPS server on every replica.

It answers from memory (``admission.mutate_pod`` over the current snapshots) and never blocks a
Pod: any error is answered ``allowed`` with no patch, and the API server is told to ignore a
webhook that is down (``failurePolicy: Ignore`` and a 2 s timeout by default, kube-system and
geopin's own namespace always excluded). Certificates come from a mounted directory (``tls.crt``/
``tls.key``, e.g. cert-manager), re-read when they change so a rotation needs no restart, or are made
at start-up (one replica, development), in which case geopin keeps its MutatingWebhookConfiguration's
``caBundle`` in step (:class:`geopin.io.certs.ServingTls`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from geopin.core.admission import mutate_pod
from geopin.io import metrics
from geopin.io.https import HttpsServer

if TYPE_CHECKING:
    from geopin.core.decisions import PolicySnapshot

__all__ = ["FAILURE_POLICIES", "TIMEOUT_RANGE", "WebhookServer", "webhook_configuration"]

logger = logging.getLogger(__name__)

PATH = "/mutate/pods"
FAILURE_POLICIES = ("Ignore", "Fail")
TIMEOUT_RANGE = range(1, 31)  # what admissionregistration.k8s.io/v1 accepts for timeoutSeconds


def webhook_configuration(
    name: str,
    ca_pem: bytes,
    *,
    url: str | None,
    service: tuple[str, str, int] | None,
    operator_namespace: str,
    failure_policy: str = "Ignore",
    timeout_seconds: int = 2,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration geopin serves: by default fail open and fast; never for system namespaces.

    ``failure_policy="Fail"`` is the platform team's choice to refuse Pods while no geopin replica answers
    (e.g. where an unpinned pull is worse than a delayed Pod); geopin itself never refuses one.
    """
    if failure_policy not in FAILURE_POLICIES:
        raise ValueError(f"webhook failurePolicy must be one of {', '.join(FAILURE_POLICIES)}, got {failure_policy!r}")
    if timeout_seconds not in TIMEOUT_RANGE:
        raise ValueError(f"webhook timeoutSeconds must be 1 to 30, got {timeout_seconds}")
    if url is not None:
        client_config: dict[str, Any] = {"url": url.rstrip("/") + PATH}
    else:
        assert service is not None
        namespace, service_name, port = service
        client_config = {"service": {"namespace": namespace, "name": service_name, "port": port, "path": PATH}}
    client_config["caBundle"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "geopin"}},
        "webhooks": [
            {
                "name": "pods.geopin.io",
                "admissionReviewVersions": ["v1"],
                "clientConfig": client_config,
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]},
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["pods/ephemeralcontainers"],
                    },
                ],
                "failurePolicy": failure_policy,
                "timeoutSeconds": timeout_seconds,
                "sideEffects": "None",
                "reinvocationPolicy": "Never",
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", operator_namespace],
                        }
                    ]
                },
            }
        ],
    }


class WebhookServer:
    def __init__(
        self,
        port: int,
        snapshots: Callable[[], list[PolicySnapshot]],
        namespace_labels: Callable[[str], Mapping[str, str] | None],
        *,
        cert_dir: str | None = None,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        address: str = "0.0.0.0",
    ) -> None:
        self.snapshots = snapshots
        self.namespace_labels = namespace_labels
        self.server = HttpsServer("webhook", port, address, cert_dir, hosts)

    @property
    def ca_pem(self) -> bytes:
        """The CA the API server must trust (the configuration's caBundle)."""
        return self.server.tls.ca_pem

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PATH, self._review)
        await self.server.start(app)
        logger.info("webhook: serving %s on :%d", PATH, self.server.port)

    async def stop(self) -> None:
        await self.server.stop()

    async def _review(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        result, uid, patch = "error", "", []
        try:
            review = await request.json()
            req = review.get("request") or {}
            uid = str(req.get("uid", ""))
            namespace = str(req.get("namespace") or "")
            patch = mutate_pod(
                req.get("object") or {},
                namespace,
                self.snapshots(),
                self.namespace_labels(namespace),
                subresource=req.get("subResource"),
            )
            result = "mutated" if patch else "unchanged"
        except Exception:
            logger.exception("webhook: review failed; the Pod is admitted unchanged")
            patch = []
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        metrics.ADMISSION_DURATION.labels(result).observe(time.perf_counter() - began)
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
