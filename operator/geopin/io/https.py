"""One aiohttp application served over TLS (:class:`~geopin.io.certs.ServingTls`): the webhook, secure metrics."""

from __future__ import annotations

from aiohttp import web

from geopin.io.certs import ServingCertificate, ServingTls

__all__ = ["HttpsServer"]


class HttpsServer:
    def __init__(
        self,
        name: str,
        port: int,
        address: str,
        cert_dir: str | None,
        hosts: tuple[str, ...],
        certificate: ServingCertificate | None = None,
    ) -> None:
        self.port = port
        self.address = address
        self.tls = ServingTls(name, cert_dir, hosts, certificate)
        self._runner: web.AppRunner | None = None

    async def start(self, app: web.Application) -> None:
        self.tls.start()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port, ssl_context=self.tls.context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.tls.stop()
