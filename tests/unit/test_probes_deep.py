"""The deep probe (a canary image): manifest HEAD, then the config blob through the registry's redirect.

httpx.MockTransport stands in for a registry and for ACR's data endpoint, so only the classification
and the header rules are checked here; tests/e2e proves the same against real registries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from geopin.core.health import HealthTracker
from geopin.core.policy import ProbeSettings, Replica
from geopin.io.probes import BLOB_READ_LIMIT, Outcome, ProbeResult, RegistryClient

EP = "contoso.eastus.geo.azurecr.io"
DATA = "contoso.eastus.data.azurecr.io"
TOKEN = "registry-token-must-stay-home"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": CONFIG_DIGEST, "size": 80},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SIGNED = f"https://{DATA}/kubernetes/blobs/{CONFIG_DIGEST}?se=2026-12-01T00%3A00%3A00Z&sig=presigned"
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="https://{EP}/oauth2/token",service="{EP}"'}

DataAnswer = Callable[[httpx.Request], httpx.Response] | Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


class AcrLike:
    """A registry that wants a bearer token and sends blob downloads to its data endpoint (307)."""

    def __init__(self, data: DataAnswer | None = None, blob: httpx.Response | None = None) -> None:
        self.data = data or (lambda request: httpx.Response(200, content=CONFIG))
        self.blob = blob
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == DATA:
            answer = self.data(request)
            return await answer if isinstance(answer, Coroutine) else answer
        path = request.url.path
        if path == "/oauth2/token":
            return httpx.Response(200, json={"access_token": TOKEN, "expires_in": 300})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, headers=CHALLENGE)
        if "/manifests/" in path:
            headers = {
                "Docker-Content-Digest": MANIFEST_DIGEST,
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            }
            return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else MANIFEST)
        if path == f"/v2/platform/canary/blobs/{CONFIG_DIGEST}":
            return self.blob if self.blob is not None else httpx.Response(307, headers={"Location": SIGNED})
        return httpx.Response(404)

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]


def deep_probe(registry: Any, timeout: float = 2.0, endpoint: str = EP) -> ProbeResult:
    async def go() -> ProbeResult:
        async with RegistryClient(transport=httpx.MockTransport(registry), timeout_seconds=timeout) as client:
            return await client.probe(endpoint, "platform/canary:1")

    return asyncio.run(go())


def test_blob_is_fetched_from_the_data_endpoint_without_the_registry_token() -> None:
    registry = AcrLike()
    result = deep_probe(registry)
    assert result.outcome is Outcome.OK, result
    (download,) = registry.to(DATA)
    assert str(download.url) == SIGNED  # the pre-signed query string kept byte for byte
    assert "Authorization" not in download.headers
    blob_requests = [r for r in registry.to(EP) if "/blobs/" in r.url.path]
    assert blob_requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert DATA in result.message
    assert MANIFEST_DIGEST in result.message
    assert TOKEN not in result.message


def test_the_manifest_is_read_once_per_digest_and_endpoint_agnostic() -> None:
    registry = AcrLike()

    async def go() -> list[ProbeResult]:
        async with RegistryClient(transport=httpx.MockTransport(registry)) as client:
            return [await client.probe(EP, "platform/canary:1") for _ in range(3)]

    assert [r.outcome for r in asyncio.run(go())] == [Outcome.OK] * 3
    manifest_gets = [r for r in registry.requests if r.method == "GET" and "/manifests/" in r.url.path]
    assert [r.url.path for r in manifest_gets] == [f"/v2/platform/canary/manifests/{MANIFEST_DIGEST}"]
    assert len(registry.to(DATA)) == 3  # but every probe downloads


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("All connection attempts failed") from ConnectionRefusedError(111, "refused")


@pytest.mark.parametrize(
    ("answer", "outcome", "status", "words"),
    [
        (refuse, Outcome.DATA_ENDPOINT, None, "connection refused"),
        (lambda r: httpx.Response(503), Outcome.DATA_ENDPOINT, 503, "HTTP 503"),
        (lambda r: httpx.Response(403), Outcome.DATA_ENDPOINT, 403, "HTTP 403"),
        (lambda r: httpx.Response(404), Outcome.DATA_ENDPOINT, 404, "HTTP 404"),
        (lambda r: httpx.Response(200, content=b"not the config"), Outcome.DATA_ENDPOINT, None, "does not match"),
        # ACR throttles data endpoints too; throttling is reported, not a failure by default.
        (lambda r: httpx.Response(429), Outcome.THROTTLED, 429, "HTTP 429"),
    ],
)
def test_a_failing_data_endpoint_is_its_own_outcome(
    answer: DataAnswer, outcome: Outcome, status: int | None, words: str
) -> None:
    result = deep_probe(AcrLike(data=answer))
    assert result.outcome is outcome
    assert result.status == status
    assert result.message.startswith(f"data endpoint {DATA}: ")
    assert words in result.message


def test_a_hung_data_endpoint_is_data_endpoint_after_the_timeout() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    result = deep_probe(AcrLike(data=hang), timeout=0.3)
    assert result.outcome is Outcome.DATA_ENDPOINT
    assert result.message == f"data endpoint {DATA}: timeout after 0.3s"


def test_the_registry_login_endpoint_still_answers_while_its_data_endpoint_is_down() -> None:
    async def go() -> ProbeResult:
        registry = AcrLike(data=refuse)
        async with RegistryClient(transport=httpx.MockTransport(registry)) as client:
            return await client.probe(EP)  # the shallow probe: GET /v2/

    assert asyncio.run(go()).outcome is Outcome.OK


def test_at_most_64_kib_of_the_blob_are_read() -> None:
    produced = {"bytes": 0}

    async def endless() -> AsyncIterator[bytes]:
        while True:
            produced["bytes"] += 16 * 1024
            yield b"x" * 16 * 1024

    result = deep_probe(AcrLike(data=lambda r: httpx.Response(200, content=endless())))
    assert result.outcome is Outcome.OK  # an incomplete read cannot be checked against the digest
    assert f"{BLOB_READ_LIMIT} bytes" in result.message
    assert produced["bytes"] <= BLOB_READ_LIMIT + 16 * 1024


def test_a_blob_missing_at_the_registry_is_not_found_not_data_endpoint() -> None:
    result = deep_probe(AcrLike(blob=httpx.Response(404)))
    assert result.outcome is Outcome.NOT_FOUND
    assert "data endpoint" not in result.message


def test_a_registry_serving_blobs_itself_needs_no_data_endpoint() -> None:
    result = deep_probe(AcrLike(blob=httpx.Response(200, content=CONFIG)))
    assert result.outcome is Outcome.OK
    assert "from the registry" in result.message


def test_a_same_origin_redirect_keeps_the_token_and_is_not_the_data_endpoint() -> None:
    registry = AcrLike(blob=httpx.Response(307, headers={"Location": "/storage/config"}))
    inner = registry.__call__

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/storage/config":
            registry.requests.append(request)
            ok = request.headers.get("Authorization") == f"Bearer {TOKEN}"
            return httpx.Response(200 if ok else 401, content=CONFIG)
        return await inner(request)

    result = deep_probe(route)
    assert result.outcome is Outcome.OK, result
    assert "from the registry" in result.message


def test_redirect_loops_and_missing_locations_end() -> None:
    looping = AcrLike(data=lambda r: httpx.Response(302, headers={"Location": SIGNED}))
    result = deep_probe(looping)
    assert result.outcome is Outcome.DATA_ENDPOINT
    assert "redirects" in result.message
    assert len(looping.to(DATA)) == 5
    assert deep_probe(AcrLike(blob=httpx.Response(307))).outcome is Outcome.NOT_FOUND


def test_an_index_is_followed_to_its_linux_amd64_image() -> None:
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": MANIFEST_DIGEST, "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()
    registry = AcrLike()
    inner = registry.__call__

    async def route(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/manifests/sha256:" + "9" * 64):
            registry.requests.append(request)
            return httpx.Response(200, content=index)
        response = await inner(request)
        if request.method == "HEAD" and response.status_code == 200:
            return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "9" * 64})
        return response

    result = deep_probe(route)
    assert result.outcome is Outcome.OK, result
    gets = [r.url.path for r in registry.requests if r.method == "GET" and "/manifests/" in r.url.path]
    assert gets == [
        "/v2/platform/canary/manifests/sha256:" + "9" * 64,
        f"/v2/platform/canary/manifests/{MANIFEST_DIGEST}",
    ]


def test_data_endpoint_makes_a_replica_unhealthy() -> None:
    tracker = HealthTracker(ProbeSettings(failure_threshold=2), [Replica("eastus", EP)])
    tracker.observe("eastus", "ok", 0.0)
    tracker.observe("eastus", Outcome.DATA_ENDPOINT.value, 1.0)
    transition = tracker.observe("eastus", Outcome.DATA_ENDPOINT.value, 2.0, message=f"data endpoint {DATA}: x")
    assert transition is not None
    assert str(transition.current) == "Unhealthy"
    assert tracker.usable(3.0) == frozenset()
