"""geopin.io.probes logic with httpx.MockTransport: status and error classes, auth flows, token caching.

These are not registries: the real-registry behaviour is in tests/e2e/test_probes.py. The ACR AAD
exchange is only checked here against the documented request shapes, not against a real ACR.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from geopin.io.probes import (
    AAD_SCOPE,
    BasicCredentials,
    Outcome,
    ProbeError,
    ProbeResult,
    RegistryClient,
    classify_exception,
    classify_status,
    parse_challenge,
)

T = TypeVar("T")
EP = "contoso.eastus.geo.azurecr.io"
PASSWORD = "hunter2-very-secret"
Handler = Callable[[httpx.Request], httpx.Response] | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CANARY_CONFIG = b'{"architecture":"amd64","os":"linux","config":{}}'
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CANARY_CONFIG).hexdigest()
CANARY_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": CONFIG_DIGEST, "size": 47},
    "layers": [],
}


def with_canary_content(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    """An empty 200 to a manifest or blob GET gets the canary's manifest or config as its body."""
    if request.method != "GET" or response.status_code != 200 or response.content:
        return response
    if "/manifests/" in request.url.path:
        return httpx.Response(200, headers=response.headers, json=CANARY_MANIFEST)
    if "/blobs/" in request.url.path:
        return httpx.Response(200, headers=response.headers, content=CANARY_CONFIG)
    return response


@dataclass
class Recorder:
    """A MockTransport handler that records requests and answers from a routing function.

    Authorised manifest and blob GETs answered with an empty 200 carry the canary's content, so a
    routing function only decides about auth and status.
    """

    route: Callable[[httpx.Request], httpx.Response]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        response = self.route(request)
        response.read()
        return with_canary_content(request, response)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def client_for(handler: Handler, **options: Any) -> RegistryClient:
    return RegistryClient(transport=httpx.MockTransport(handler), **options)


def probe(handler: Handler, canary: str | None = None, **options: Any) -> ProbeResult:
    async def go() -> ProbeResult:
        async with client_for(handler, **options) as client:
            return await client.probe(EP, canary)

    return run(go())


def answer(status: int, headers: dict[str, str] | None = None, **kwargs: Any) -> Handler:
    return lambda request: httpx.Response(status, headers=headers, **kwargs)


def raising(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


_serial = itertools.count()


def jwt_like(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(exp), 'jti': next(_serial)})}.c2ln"


# -- pure classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "challenged", "outcome"),
    [
        (200, False, Outcome.OK),
        (204, False, Outcome.OK),
        (401, True, Outcome.OK),
        (401, False, Outcome.UNAUTHORIZED),
        (403, False, Outcome.UNAUTHORIZED),
        (404, False, Outcome.NOT_FOUND),
        (410, False, Outcome.NOT_FOUND),
        (400, False, Outcome.NOT_FOUND),
        (408, False, Outcome.TIMEOUT),
        (429, False, Outcome.THROTTLED),
        (500, False, Outcome.HTTP_5XX),
        (502, False, Outcome.HTTP_5XX),
        (503, False, Outcome.HTTP_5XX),
        (504, False, Outcome.HTTP_5XX),
    ],
)
def test_classify_status(status: int, challenged: bool, outcome: Outcome) -> None:
    assert classify_status(status, challenged=challenged) is outcome


def test_outcome_values_are_the_metric_reason_labels() -> None:
    assert {o.value for o in Outcome} - {"ok"} == {
        "timeout",
        "connect",
        "tls",
        "http_5xx",
        "throttled",
        "data_endpoint",
        "unauthorized",
        "not_found",
    }


def _wrapped(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("error", "outcome", "fragment"),
    [
        (httpx.ConnectTimeout("x"), Outcome.TIMEOUT, "connect timeout after 2s"),
        (httpx.ReadTimeout("x"), Outcome.TIMEOUT, "read timeout"),
        (httpx.PoolTimeout("x"), Outcome.TIMEOUT, "timeout"),
        (TimeoutError(), Outcome.TIMEOUT, "timeout"),
        (_wrapped(httpx.ConnectError("x"), ConnectionRefusedError(111, "x")), Outcome.CONNECT, "refused"),
        (_wrapped(httpx.ReadError("x"), ConnectionResetError(104, "x")), Outcome.CONNECT, "reset"),
        (httpx.RemoteProtocolError("Server disconnected"), Outcome.CONNECT, "broke off the HTTP exchange"),
        (
            _wrapped(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "certificate verify failed")),
            Outcome.TLS,
            "TLS",
        ),
        (_wrapped(httpx.ConnectError("x"), ssl.SSLError(1, "WRONG_VERSION_NUMBER")), Outcome.TLS, "TLS"),
    ],
)
def test_classify_exception(error: Exception, outcome: Outcome, fragment: str) -> None:
    got, message = classify_exception(error, 2.0)
    assert got is outcome
    assert fragment in message
    assert "\n" not in message


def test_parse_challenge() -> None:
    headers = httpx.Headers(
        [
            ("WWW-Authenticate", 'Basic realm="x"'),
            (
                "WWW-Authenticate",
                'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
            ),
        ]
    )
    challenge = parse_challenge(headers)
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example/token"
    assert challenge.service == "registry.example"
    assert challenge.params["scope"] == "repository:a/b:pull,push"
    basic = parse_challenge(httpx.Headers({"WWW-Authenticate": 'Basic realm="geopin"'}))
    assert basic is not None
    assert basic.scheme == "basic"
    assert parse_challenge(httpx.Headers({"WWW-Authenticate": "Negotiate"})) is None
    assert parse_challenge(httpx.Headers()) is None


# -- probe classes over a mock transport -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "outcome"),
    [
        (200, {}, Outcome.OK),
        (401, {"WWW-Authenticate": 'Bearer realm="https://x/token",service="x"'}, Outcome.OK),
        (401, {"WWW-Authenticate": 'Basic realm="x"'}, Outcome.OK),
        (401, {}, Outcome.UNAUTHORIZED),
        (403, {}, Outcome.UNAUTHORIZED),
        (404, {}, Outcome.NOT_FOUND),
        (429, {"Retry-After": "3"}, Outcome.THROTTLED),
        (500, {}, Outcome.HTTP_5XX),
        (503, {}, Outcome.HTTP_5XX),
    ],
)
def test_ping_outcomes(status: int, headers: dict[str, str], outcome: Outcome) -> None:
    recorder = Recorder(lambda request: httpx.Response(status, headers=headers))
    result = probe(recorder)
    assert result.outcome is outcome, result
    assert result.status == status
    assert recorder.paths() == ["GET /v2/"]
    assert str(recorder.requests[0].url) == f"https://{EP}/v2/"
    assert str(status) in result.message


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.OK), (404, Outcome.NOT_FOUND), (429, Outcome.THROTTLED), (503, Outcome.HTTP_5XX)],
)
def test_canary_outcomes(status: int, outcome: Outcome) -> None:
    recorder = Recorder(lambda request: httpx.Response(status, headers={"Docker-Content-Digest": "sha256:" + "a" * 64}))
    result = probe(recorder, "platform/canary:1", scheme="http")
    assert result.outcome is outcome
    assert result.status == status
    request = recorder.requests[0]
    # Only an answering manifest leads on to the config blob (the deep probe's second step).
    assert recorder.paths()[1:] == (
        # the manifest by the digest its HEAD named: the same content even if the tag moves meanwhile
        ["GET /v2/platform/canary/manifests/sha256:" + "a" * 64, f"GET /v2/platform/canary/blobs/{CONFIG_DIGEST}"]
        if status == 200
        else []
    )
    assert request.method == "HEAD"
    assert str(request.url) == f"http://{EP}/v2/platform/canary/manifests/1"
    accept = request.headers["Accept"]
    for media_type in (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept


def test_canary_by_digest_uses_the_digest_as_reference() -> None:
    digest = "sha256:" + "b" * 64
    recorder = Recorder(lambda request: httpx.Response(200))
    assert probe(recorder, f"platform/canary@{digest}").outcome is Outcome.OK
    assert recorder.requests[0].url.path == f"/v2/platform/canary/manifests/{digest}"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (httpx.ConnectTimeout("timed out"), Outcome.TIMEOUT),
        (httpx.ReadTimeout("timed out"), Outcome.TIMEOUT),
        (_wrapped(httpx.ConnectError("x"), ConnectionRefusedError(111, "refused")), Outcome.CONNECT),
        (_wrapped(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "verify failed")), Outcome.TLS),
    ],
)
def test_transport_errors_become_outcomes(error: Exception, outcome: Outcome) -> None:
    result = probe(raising(error))
    assert result.outcome is outcome
    assert result.status is None


def test_a_hanging_answer_is_cut_at_the_timeout() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # never set: a server that accepted and went silent
        raise AssertionError("unreachable")

    began = time.monotonic()
    result = probe(hang, timeout_seconds=0.2)
    assert result.outcome is Outcome.TIMEOUT
    assert time.monotonic() - began < 1.0


def test_invalid_canary_is_reported_not_raised() -> None:
    result = probe(answer(200), "Not A Reference!")
    assert result.outcome is Outcome.NOT_FOUND
    assert "invalid canary" in result.message


def test_invalid_ca_bundle_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="caBundle") as caught:
        RegistryClient(ca_bundle="-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    assert "not a cert" not in str(caught.value)


# -- distribution token auth ----------------------------------------------------------------------

BEARER = {"WWW-Authenticate": f'Bearer realm="https://auth.example/token",service="{EP}"'}


def token_registry(tokens: list[str], *, expires_in: int | None = 120, token_status: int = 200) -> Recorder:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            if token_status != 200:
                return httpx.Response(token_status)
            tokens.append(f"tok-{len(tokens)}-{PASSWORD}")
            body: dict[str, Any] = {"token": tokens[-1]}
            if expires_in is not None:
                body["expires_in"] = expires_in
            return httpx.Response(200, json=body)
        if request.headers.get("Authorization") in {f"Bearer {t}" for t in tokens[-1:]}:
            return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "c" * 64})
        return httpx.Response(401, headers=BEARER)

    return Recorder(route)


def test_bearer_flow_anonymous_and_cached() -> None:
    tokens: list[str] = []
    recorder = token_registry(tokens)
    clock = Clock()

    async def go() -> list[ProbeResult]:
        async with client_for(recorder, clock=clock) as client:
            first = await client.probe(EP, "platform/canary:1")
            second = await client.probe(EP, "platform/canary:1")
            clock.now += 120  # expires_in 120, margin 12: stale
            third = await client.probe(EP, "platform/canary:1")
            return [first, second, third]

    results = run(go())
    assert [r.outcome for r in results] == [Outcome.OK] * 3
    blob = f"GET /v2/platform/canary/blobs/{CONFIG_DIGEST}"
    assert recorder.paths() == [
        "HEAD /v2/platform/canary/manifests/1",
        "GET /token",
        "HEAD /v2/platform/canary/manifests/1",
        "GET /v2/platform/canary/manifests/sha256:" + "c" * 64,  # read once per digest for the config's
        blob,
        "HEAD /v2/platform/canary/manifests/1",  # cached token
        blob,  # cached config digest
        "GET /token",  # expired: fetched before the request, no extra 401 round trip
        "HEAD /v2/platform/canary/manifests/1",
        blob,
    ]
    token_request = recorder.requests[1]
    assert token_request.url.params["service"] == EP
    assert token_request.url.params["scope"] == "repository:platform/canary:pull"
    assert "Authorization" not in token_request.headers  # anonymous without credentials
    for result in results:
        for token in tokens:
            assert token not in repr(result)


def test_bearer_flow_sends_basic_credentials_to_the_realm_and_defaults_expiry() -> None:
    tokens: list[str] = []
    recorder = token_registry(tokens, expires_in=None)
    clock = Clock()

    async def go() -> list[ProbeResult]:
        async with client_for(recorder, clock=clock, credentials=BasicCredentials("u", PASSWORD)) as client:
            first = await client.probe(EP, "platform/canary:1")
            clock.now += 50  # default 60 s minus a 6 s margin: still fresh
            second = await client.probe(EP, "platform/canary:1")
            clock.now += 5
            third = await client.probe(EP, "platform/canary:1")
            return [first, second, third]

    results = run(go())
    assert [r.outcome for r in results] == [Outcome.OK] * 3
    token_requests = [r for r in recorder.requests if r.url.host == "auth.example"]
    assert len(token_requests) == 2
    expected = "Basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    assert token_requests[0].headers["Authorization"] == expected


@pytest.mark.parametrize(
    ("token_status", "outcome"),
    [(401, Outcome.UNAUTHORIZED), (403, Outcome.UNAUTHORIZED), (429, Outcome.THROTTLED), (503, Outcome.HTTP_5XX)],
)
def test_token_endpoint_failures(token_status: int, outcome: Outcome) -> None:
    result = probe(token_registry([], token_status=token_status), "platform/canary:1")
    assert result.outcome is outcome
    assert result.status == token_status
    assert "token endpoint" in result.message


def test_refused_token_is_refetched_once_then_unauthorized() -> None:
    tokens: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            tokens.append(f"tok-{len(tokens)}")
            return httpx.Response(200, json={"token": tokens[-1], "expires_in": 300})
        return httpx.Response(401, headers=BEARER)  # the registry refuses every token

    recorder = Recorder(route)
    result = probe(recorder, "platform/canary:1")
    assert result.outcome is Outcome.UNAUTHORIZED
    assert result.status == 401
    assert recorder.paths().count("GET /token") == 1  # no loop


def test_basic_challenge_with_and_without_credentials() -> None:
    good = "Basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()

    def route(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == good:
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    anonymous = probe(Recorder(route), "platform/canary:1")
    assert anonymous.outcome is Outcome.UNAUTHORIZED
    recorder = Recorder(route)

    async def go() -> list[ProbeResult]:
        async with client_for(recorder, credentials=BasicCredentials("u", PASSWORD)) as client:
            return [await client.probe(EP, "platform/canary:1") for _ in range(2)]

    assert [r.outcome for r in run(go())] == [Outcome.OK, Outcome.OK]
    # The challenge is remembered: after the first refusal every request sends basic at once.
    assert [r.headers.get("Authorization") for r in recorder.requests] == [None] + [good] * (len(recorder.requests) - 1)
    wrong = probe(Recorder(route), "platform/canary:1", credentials=BasicCredentials("u", "nope-wrong"))
    assert wrong.outcome is Outcome.UNAUTHORIZED
    assert "nope-wrong" not in repr(wrong)


def test_manifest_digest() -> None:
    digest = "sha256:" + "d" * 64

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/present"):
            return httpx.Response(200, headers={"Docker-Content-Digest": digest})
        if request.url.path.endswith("/nodigest"):
            return httpx.Response(200, content=b"{}" if request.method == "GET" else b"")
        if request.url.path.endswith("/busy"):
            return httpx.Response(429)
        return httpx.Response(404)

    async def go() -> tuple[str | None, str | None, str | None]:
        async with client_for(Recorder(route)) as client:
            return (
                await client.manifest_digest(EP, "a/b", "present"),
                await client.manifest_digest(EP, "a/b", "absent"),
                await client.manifest_digest(EP, "a/b", "nodigest"),
            )

    present, absent, hashed = run(go())
    assert present == digest
    assert absent is None
    assert hashed == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256("{}")

    async def busy() -> None:
        async with client_for(Recorder(route)) as client:
            await client.manifest_digest(EP, "a/b", "busy")

    with pytest.raises(ProbeError) as caught:
        run(busy())
    assert caught.value.outcome is Outcome.THROTTLED
    assert caught.value.status == 429


# -- ACR AAD exchange (request shapes from the ACR docs; not proven against a real ACR) -----------


@dataclass
class FakeAccessToken:
    token: str
    expires_on: int


class FakeAADCredential:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> FakeAccessToken:
        self.calls.append(scopes)
        return FakeAccessToken(f"aad-{len(self.calls)}-{PASSWORD}", int(time.time()) + 3600)

    async def close(self) -> None:
        pass


def acr(refresh_lifetime: float = 3 * 3600, access_expires_in: int | None = 300) -> Recorder:
    state = {"refresh": 0, "access": 0}
    valid_access: set[str] = set()

    def route(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/oauth2/exchange":
            state["refresh"] += 1
            return httpx.Response(200, json={"refresh_token": jwt_like(time.time() + refresh_lifetime)})
        if path == "/oauth2/token":
            state["access"] += 1
            token = f"acr-access-{state['access']}"
            valid_access.add(token)
            body: dict[str, Any] = {"access_token": token}
            if access_expires_in is not None:
                body["expires_in"] = access_expires_in
            return httpx.Response(200, json=body)
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") in valid_access:
            return httpx.Response(200)
        host = request.url.netloc.decode()
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": f'Bearer realm="https://{host}/oauth2/token",service="{host}"'},
        )

    return Recorder(route)


def form(request: httpx.Request) -> dict[str, str]:
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    return dict(urllib.parse.parse_qsl(request.content.decode(), strict_parsing=True))


def test_acr_exchange_form_bodies_and_caching() -> None:
    recorder = acr()
    credential = FakeAADCredential()
    clock = Clock()
    other = "contoso.westus.geo.azurecr.io"

    async def go() -> list[ProbeResult]:
        async with client_for(recorder, clock=clock, aad_credential=credential) as client:
            results = [await client.probe(EP, "platform/canary:1"), await client.probe(EP, "platform/canary:1")]
            clock.now += 300  # the access token (300 s) is stale, the refresh token (3 h) is not
            results.append(await client.probe(EP, "platform/canary:1"))
            clock.now += 3 * 3600  # both stale: exchange again
            results.append(await client.probe(EP, "platform/canary:1"))
            results.append(await client.probe(other, "platform/canary:1"))  # its own surface
            return results

    results = run(go())
    assert [r.outcome for r in results] == [Outcome.OK] * 5, results
    assert credential.calls == [(AAD_SCOPE,)] * 3

    exchanges = [r for r in recorder.requests if r.url.path == "/oauth2/exchange"]
    token_posts = [r for r in recorder.requests if r.url.path == "/oauth2/token"]
    assert [r.url.host for r in exchanges] == [EP, EP, other]
    assert len(token_posts) == 4  # first, after access expiry, after both expired, the other endpoint
    assert exchanges[0].method == "POST"
    assert str(exchanges[0].url) == f"https://{EP}/oauth2/exchange"
    assert exchanges[0].content.decode() == (f"grant_type=access_token&service={EP}&access_token=aad-1-{PASSWORD}")
    assert form(exchanges[2]) == {"grant_type": "access_token", "service": other, "access_token": f"aad-3-{PASSWORD}"}
    token_form = form(token_posts[0])
    assert list(token_form) == ["grant_type", "service", "scope", "refresh_token"]
    assert token_form["grant_type"] == "refresh_token"
    assert token_form["service"] == EP
    assert token_form["scope"] == "repository:platform/canary:pull"
    assert token_form["refresh_token"].count(".") == 2
    assert form(token_posts[1])["refresh_token"] == token_form["refresh_token"]  # cached refresh token reused
    assert form(token_posts[2])["refresh_token"] != token_form["refresh_token"]
    for result in results:
        assert PASSWORD not in repr(result)
        assert "acr-access" not in result.message


def test_acr_access_token_without_expires_in_uses_its_jwt_exp_or_the_default() -> None:
    recorder = acr(access_expires_in=None)
    clock = Clock()

    async def go() -> list[ProbeResult]:
        async with client_for(recorder, clock=clock, aad_credential=FakeAADCredential()) as client:
            first = await client.probe(EP, "platform/canary:1")
            clock.now += 30
            second = await client.probe(EP, "platform/canary:1")
            clock.now += 60
            third = await client.probe(EP, "platform/canary:1")
            return [first, second, third]

    assert [r.outcome for r in run(go())] == [Outcome.OK] * 3
    assert [r.url.path for r in recorder.requests].count("/oauth2/token") == 2


def test_acr_refused_refresh_token_is_exchanged_again_once() -> None:
    calls = {"token": 0}

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/exchange":
            return httpx.Response(200, json={"refresh_token": "opaque-refresh"})
        if request.url.path == "/oauth2/token":
            calls["token"] += 1
            if calls["token"] == 1:
                return httpx.Response(401)
            return httpx.Response(200, json={"access_token": "acr-ok", "expires_in": 300})
        if request.headers.get("Authorization") == "Bearer acr-ok":
            return httpx.Response(200)
        return httpx.Response(
            401, headers={"WWW-Authenticate": f'Bearer realm="https://{EP}/oauth2/token",service="{EP}"'}
        )

    recorder = Recorder(route)
    result = probe(recorder, "platform/canary:1", aad_credential=FakeAADCredential())
    assert result.outcome is Outcome.OK
    assert [r.url.path for r in recorder.requests].count("/oauth2/exchange") == 2


def test_aad_failure_is_unauthorized_without_details() -> None:
    class Broken(FakeAADCredential):
        async def get_token(self, *scopes: str, **kwargs: Any) -> FakeAccessToken:
            raise RuntimeError(f"client secret {PASSWORD} rejected")

    result = probe(acr(), "platform/canary:1", aad_credential=Broken())
    assert result.outcome is Outcome.UNAUTHORIZED
    assert PASSWORD not in result.message
    assert "Azure AD" in result.message


# -- secrets and docker config ---------------------------------------------------------------------


def test_secrets_stay_out_of_reprs() -> None:
    credentials = BasicCredentials("u", PASSWORD)
    assert PASSWORD not in repr(credentials)
    client = RegistryClient(credentials=credentials)
    assert PASSWORD not in repr(client)
    run(client.aclose())
