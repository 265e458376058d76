"""No credential reaches a message, in any encoding: raw, repr-escaped, base64 or in a Basic header.

A real HTTP server on loopback (aiohttp) and httpx's real transport, because the leaks this guards
against come from the HTTP stack itself: h11 refuses a header value with an illegal character and
puts the value's repr into its exception.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopin.cli.run import QUIET_LOGGERS
from geopin.core.health import HealthTracker
from geopin.core.policy import ProbeSettings, Replica
from geopin.io.probes import BasicCredentials, ProbeError, RegistryClient
from tests.unit.conftest import examples

CANARY = "platform/canary:1"


@dataclass
class Secrets:
    token: str = "token"
    password: str = "password"


@asynccontextmanager
async def registry(secrets: Secrets) -> AsyncIterator[str]:
    """A registry that asks for a bearer token (with basic credentials) and hands out ``secrets.token``."""

    async def challenge(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "").startswith("Bearer "):
            return web.Response(status=200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})
        realm = f"http://{request.host}/token"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})

    async def token(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": secrets.token, "expires_in": 300})

    app = web.Application()
    app.router.add_route("*", "/v2/{tail:.*}", challenge)
    app.router.add_get("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def encodings(secret: str, username: str = "geopin") -> Iterator[str]:
    """Every form in which a secret could be printed."""
    yield secret
    yield repr(secret)[1:-1]
    yield repr(secret.encode())[2:-1]
    yield repr(secret.encode("latin-1", "replace"))[2:-1]
    yield base64.b64encode(secret.encode()).decode()
    yield base64.b64encode(f"{username}:{secret}".encode()).decode()


def capture_as_geopin_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Every log record at DEBUG (geopin run --verbose), the libraries geopin quiets at WARNING."""
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)


def leaks(secret: str, text: str) -> list[str]:
    return [form for form in encodings(secret) if len(form) >= 8 and form in text]


async def messages(secrets: Secrets) -> list[str]:
    """Every message a probe, a lookup and the health state machine make with these secrets."""
    found: list[str] = []
    async with registry(secrets) as endpoint:
        credentials = BasicCredentials(username="geopin", password=secrets.password)
        async with RegistryClient(scheme="http", timeout_seconds=2, credentials=credentials) as client:
            result = await client.probe(endpoint, CANARY)
            found += [result.message, repr(result), repr(client)]
            try:
                await client.manifest_digest(endpoint, "platform/canary", "1")
            except ProbeError as e:
                found += [e.message, str(e), repr(e)]
            tracker = HealthTracker(ProbeSettings(failure_threshold=1), [Replica("eastus", endpoint)])
            transition = tracker.observe("eastus", str(result.outcome), 0.0, result.latency_seconds, result.message)
            found += [tracker.replicas["eastus"].message, "" if transition is None else transition.message]
    return found


# A token the token endpoint may answer with that h11 refuses in a header (a newline, a NUL, DEL ...).
ILLEGAL_HEADER_TOKENS = ["s3cr3t-t0ken\nX-Injected: 1", "s3cr3t-t0ken\x00with-nul", "s3cr3t-t0ken\x7fdel-char"]


@pytest.mark.parametrize("token", ILLEGAL_HEADER_TOKENS, ids=["newline", "nul", "del"])
def test_a_token_the_http_stack_refuses_stays_out_of_every_message(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    capture_as_geopin_logs(caplog)
    found = asyncio.run(messages(Secrets(token=token)))
    text = "\n".join([*found, *(r.getMessage() for r in caplog.records)])
    assert leaks(token, text) == [], text


# --------------------------------------------------------------------------- the property


# Each example starts a registry on loopback: 25 in CI (about 2 s), 500 with GEOPIN_HYPOTHESIS_PROFILE=long.
@settings(max_examples=examples(25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    token=st.text(min_size=16, max_size=64),
    password=st.text(min_size=16, max_size=64),
)
def test_no_credential_in_any_message_in_any_encoding(
    token: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    capture_as_geopin_logs(caplog)
    found = asyncio.run(messages(Secrets(token=token, password=password)))
    text = "\n".join([*found, *(r.getMessage() for r in caplog.records)])
    assert leaks(token, text) == [], text
    assert leaks(password, text) == [], text


def test_a_realm_that_is_not_a_url_is_reported_not_raised() -> None:
    """A registry's challenge names the token endpoint; a malformed one must not escape probe()."""

    async def scenario() -> str:
        async def challenge(request: web.Request) -> web.StreamResponse:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="http://[::1",service="r"'})

        app = web.Application()
        app.router.add_route("*", "/v2/{tail:.*}", challenge)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with RegistryClient(scheme="http", timeout_seconds=2) as client:
                result = await client.probe(f"127.0.0.1:{runner.addresses[0][1]}", CANARY)
        finally:
            await runner.cleanup()
        return f"{result.outcome}: {result.message}"

    assert asyncio.run(scenario()) == "connect: request not sent: the URL is not valid (InvalidURL)"
