"""The mutating admission webhook (Admission mode): an aiohttp HTTPS server on every replica.

It answers from memory (``admission.mutate_pod`` over the current snapshots) and never blocks a
Pod: any error is answered ``allowed`` with no patch (and the review's uid, which the API server
checks), and the API server is told to ignore a
webhook that is down (``failurePolicy: Ignore``, a 2 s timeout, kube-system and geopin's own
namespace excluded). Certificates come from a mounted directory (``tls.crt``/``tls.key``, e.g.
cert-manager), re-read when they change so a rotation needs no restart, or are made at start-up
(one replica, development), in which case geopin keeps its MutatingWebhookConfiguration's
``caBundle`` in step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from geopin.core.admission import mutate_pod
from geopin.io import metrics
from geopin.io.certs import self_signed

if TYPE_CHECKING:
    from geopin.core.decisions import PolicySnapshot

__all__ = ["MAX_REVIEW_BYTES", "WebhookServer", "webhook_configuration"]

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 10.0
PATH = "/mutate/pods"
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
    name: str, ca_pem: bytes, *, url: str | None, service: tuple[str, str, int] | None, operator_namespace: str
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration geopin serves: fail open, fast, never for system namespaces."""
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
                "failurePolicy": "Ignore",
                "timeoutSeconds": 2,
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
        self.port = port
        self.address = address
        self.snapshots = snapshots
        self.namespace_labels = namespace_labels
        self.cert_dir = Path(cert_dir) if cert_dir else None
        self.hosts = hosts
        self.ca_pem = b""
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._mtime = 0.0
        self._runner: web.AppRunner | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._generated: tempfile.TemporaryDirectory[str] | None = None
        self._burst_log = _BurstLog()

    # -- certificates -------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.cert_dir is None:
            made = self_signed(self.hosts)
            self._generated = tempfile.TemporaryDirectory(prefix="geopin-webhook-")
            directory = Path(self._generated.name)
            (directory / "tls.crt").write_bytes(made.cert_pem)
            (directory / "tls.key").write_bytes(made.key_pem)
            (directory / "tls.key").chmod(0o600)
            self.ca_pem = made.ca_pem
            self._ssl.load_cert_chain(directory / "tls.crt", directory / "tls.key")
            return
        cert, key = self.cert_dir / "tls.crt", self.cert_dir / "tls.key"
        self._mtime = max(cert.stat().st_mtime, key.stat().st_mtime)
        # New handshakes use the new pair; open connections keep theirs.
        self._ssl.load_cert_chain(cert, key)
        ca = self.cert_dir / "ca.crt"
        self.ca_pem = ca.read_bytes() if ca.exists() else cert.read_bytes()

    async def _reload(self) -> None:
        assert self.cert_dir is not None
        while True:
            await asyncio.sleep(RELOAD_SECONDS)  # the rotation check's period
            try:
                paths = (self.cert_dir / "tls.crt", self.cert_dir / "tls.key")
                if max(p.stat().st_mtime for p in paths) != self._mtime:
                    self._load()
                    logger.info("webhook: certificate reloaded from %s", self.cert_dir)
            except (OSError, ssl.SSLError) as e:
                logger.warning("webhook: cannot reload the certificate from %s: %s", self.cert_dir, e)

    # -- serving ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._load()
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(PATH, self._review)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port, ssl_context=self._ssl).start()
        if self.cert_dir is not None:
            self._reloader = asyncio.create_task(self._reload(), name="geopin-webhook-certs")
        logger.info("webhook: serving %s on :%d", PATH, self.port)

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._generated is not None:
            self._generated.cleanup()

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
            patch = mutate_pod(
                req.get("object") or {},
                namespace,
                self.snapshots(),
                self.namespace_labels(namespace),
                subresource=req.get("subResource"),
            )
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
