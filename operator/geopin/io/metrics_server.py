"""``/metrics`` over HTTPS for callers the API server authorizes (``geopin run --metrics-secure``).

The same exposition as the plain server (:func:`geopin.io.metrics.serve`, prometheus-client's
content negotiation, gzip when asked), behind :class:`~geopin.io.access_review.AccessReviewer`.
The certificate comes from a mounted directory or is self-signed at start-up, as the webhook's
(:class:`~geopin.io.https.HttpsServer`).
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from geopin.io import metrics
from geopin.io.access_review import AccessReviewer
from geopin.io.https import HttpsServer

__all__ = ["SecureMetricsServer"]

logger = logging.getLogger(__name__)

PATH = "/metrics"


class SecureMetricsServer:
    def __init__(
        self,
        port: int,
        reviewer: AccessReviewer,
        *,
        cert_dir: str | None = None,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        address: str = "0.0.0.0",
    ) -> None:
        self.reviewer = reviewer
        self.server = HttpsServer("metrics", port, address, cert_dir, hosts)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._metrics)
        await self.server.start(app)
        logger.info("metrics: serving %s over HTTPS on :%d, for authorized callers", PATH, self.server.port)

    async def stop(self) -> None:
        await self.server.stop()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        decision = await self.reviewer.check(request.headers.get("Authorization"))
        if decision.status != 200:
            logger.debug("metrics: %d for %s: %s", decision.status, decision.user or "anonymous", decision.reason)
            headers = {"WWW-Authenticate": 'Bearer realm="geopin"'} if decision.status == 401 else None
            return web.Response(status=decision.status, text=decision.reason + "\n", headers=headers)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})
        response.enable_compression()  # gzip or deflate when the request's Accept-Encoding asks for it
        return response
