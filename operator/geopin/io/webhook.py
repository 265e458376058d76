"""The mutating admission webhook (Admission mode): an aiohttp HTTPS server on every replica.

It answers from memory (``admission.mutate_pod`` over the current snapshots) and never blocks a
Pod: any error is answered ``allowed`` with no patch (and the review's uid, which the API server
checks), and the API server is told to ignore a webhook that is down (``failurePolicy: Ignore`` and a
2 s timeout by default, kube-system and geopin's own namespace always excluded). Certificates come
from a mounted directory (``tls.crt``/``tls.key``, e.g. cert-manager), re-read when they change so a
rotation needs no restart, or are made at start-up (one replica, development), in which case geopin
keeps its MutatingWebhookConfiguration's ``caBundle`` in step (:class:`geopin.io.certs.ServingTls`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from geopin.core.admission import mutate_pod
from geopin.core.redirect import PodMove, move_pod
from geopin.core.workloads import WorkloadView
from geopin.io import metrics
from geopin.io.certs import ServingCertificate
from geopin.io.https import HttpsServer

if TYPE_CHECKING:
    from geopin.core.decisions import PolicySnapshot

__all__ = ["FAILURE_POLICIES", "MAX_REVIEW_BYTES", "TIMEOUT_RANGE", "WebhookServer", "webhook_configuration"]

logger = logging.getLogger(__name__)

PATH = "/mutate/pods"
FAILURE_POLICIES = ("Ignore", "Fail")
TIMEOUT_RANGE = range(1, 31)  # what admissionregistration.k8s.io/v1 accepts for timeoutSeconds
# kube-apiserver accepts request bodies up to 3 MiB (its MaxRequestBodyBytes), and an UPDATE review
# (pods/ephemeralcontainers) carries the object and the old object: two of them plus the envelope
# (request metadata, userInfo, options). aiohttp's default of 1 MiB refused ordinary large Pods.
MAX_REVIEW_BYTES = 2 * 3 * 1024 * 1024 + 1024 * 1024
# The uid comes first in the request (the API server serialises AdmissionRequest in field order):
# enough of an unreadable review to answer it with its uid.
_UID_RE = re.compile(rb'"uid"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
_UID_SEARCH_BYTES = 64 * 1024
BURST_LOG_SECONDS = 60.0


class _BurstLog:
    """One log line per burst of unreadable reviews: the first at once, then a count once a minute."""

    def __init__(self) -> None:
        self.logged_at = -BURST_LOG_SECONDS
        self.suppressed = 0

    def __call__(self, problem: str, uid: str) -> None:
        now = time.monotonic()
        if now - self.logged_at < BURST_LOG_SECONDS:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        logger.warning(
            "webhook: an admission review %s (uid %r); the Pod is admitted unchanged%s. Further ones are "
            "counted in geopin_admission_invalid_reviews_total and reported once a minute",
            problem,
            uid,
            more,
        )
        self.logged_at, self.suppressed = now, 0


class _Unreadable(Exception):
    """The body is not a review geopin can read (counted and logged already)."""


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
        certificate: ServingCertificate | None = None,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        address: str = "0.0.0.0",
        owner_of: Callable[[Mapping[str, Any], str], WorkloadView | None] | None = None,
        on_redirect: Callable[[PodMove, WorkloadView | None], None] | None = None,
    ) -> None:
        """``owner_of``: the pinned workload a Pod was made from (the cache); with it, Pods of Patch-mode
        policies with ``strategy: Redirect`` are redirected, and ``on_redirect`` hears of each."""
        self.snapshots = snapshots
        self.namespace_labels = namespace_labels
        self.owner_of = owner_of
        self.on_redirect = on_redirect
        self.server = HttpsServer("webhook", port, address, cert_dir, hosts, certificate)
        self._burst_log = _BurstLog()

    @property
    def ca_pem(self) -> bytes:
        """The CA the API server must trust (the configuration's caBundle)."""
        return self.server.tls.ca_pem

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(PATH, self._review)
        await self.server.start(app)
        logger.info("webhook: serving %s on :%d", PATH, self.server.port)

    async def stop(self) -> None:
        await self.server.stop()

    async def _read(self, request: web.Request) -> tuple[dict[str, Any] | None, str, str | None]:
        """(the review's request, its uid, what is wrong with it: None, "too_large" or "malformed").

        The body is read in chunks so that an oversized one is counted and drained, never held whole.
        """
        body, size = bytearray(), 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size <= MAX_REVIEW_BYTES:
                body += chunk
            elif len(body) > _UID_SEARCH_BYTES:
                del body[_UID_SEARCH_BYTES:]
        found = _UID_RE.search(bytes(body[:_UID_SEARCH_BYTES]))
        uid = found.group(1).decode() if found else ""
        if size > MAX_REVIEW_BYTES:
            return None, uid, "too_large"
        try:
            review = json.loads(body)
        except ValueError:  # UnicodeDecodeError included
            return None, uid, "malformed"
        req = review.get("request") if isinstance(review, dict) else None
        if not isinstance(req, dict):
            return None, uid, "malformed"
        return req, str(req.get("uid", "")), None

    async def _review(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        result, uid, patch = "error", "", []
        try:
            req, uid, problem = await self._read(request)
            if req is None:
                metrics.ADMISSION_INVALID_REVIEWS.labels(problem).inc()
                problem_text = "too large to read" if problem == "too_large" else "malformed (not JSON or no request)"
                self._burst_log(problem_text, uid)
                raise _Unreadable
            namespace = str(req.get("namespace") or "")
            pod, snapshots, labels = req.get("object") or {}, self.snapshots(), self.namespace_labels(namespace)
            patch = mutate_pod(pod, namespace, snapshots, labels, subresource=req.get("subResource"))
            if not patch and self.owner_of is not None and not req.get("subResource"):
                owner = self.owner_of(pod, namespace)
                move = move_pod(pod, namespace, owner, snapshots, labels, admission=True)
                if move is not None:
                    patch = move.patch
                    if self.on_redirect is not None:
                        self.on_redirect(move, owner)
            result = "mutated" if patch else "unchanged"
        except _Unreadable:
            patch = []
        except Exception:
            logger.exception("webhook: review failed; the Pod is admitted unchanged")
            patch = []
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        metrics.ADMISSION_DURATION.labels(result).observe(time.perf_counter() - began)
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
