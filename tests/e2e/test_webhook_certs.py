"""The webhook re-reads a mounted certificate when it changes: a rotation needs no restart."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from geopin.io import certs
from geopin.io.certs import self_signed
from geopin.io.webhook import WebhookServer
from tests.harness.procs import free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e


def _write(directory: Path, hosts: tuple[str, ...]) -> bytes:
    made = self_signed(hosts)
    (directory / "tls.crt").write_bytes(made.cert_pem)
    (directory / "tls.key").write_bytes(made.key_pem)
    (directory / "ca.crt").write_bytes(made.ca_pem)
    return made.cert_pem


async def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "RELOAD_SECONDS", 0.2)
    first = x509.load_pem_x509_certificate(_write(tmp_path, ("localhost", "127.0.0.1"))).serial_number

    async def scenario() -> tuple[int, int]:
        port = free_port()
        server = WebhookServer(port, list, lambda _: None, cert_dir=str(tmp_path))
        await server.start()
        try:
            before = await _served_serial(port)
            second = x509.load_pem_x509_certificate(_write(tmp_path, ("localhost", "127.0.0.1"))).serial_number
            deadline = time.monotonic() + 10
            after = before
            while after != second and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # polling the served certificate until the deadline
                after = await _served_serial(port)
            return before, after
        finally:
            await server.stop()

    before, after = asyncio.run(scenario())
    assert before == first
    assert after != first, "the rotated certificate is served by the same process"
