"""geopin.io.probes against real docker-registry processes: TLS, faults, canaries, basic and token auth."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from geopin.core.keyring import credentials_for
from geopin.core.pullsecrets import parse_dockerconfig
from geopin.io.probes import (
    BasicCredentials,
    Outcome,
    ProbeError,
    ProbeResult,
    RegistryClient,
)
from tests.harness import oci, procs
from tests.harness.registries import Registry
from tests.harness.tokenserver import TokenServer

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from tests.harness.pki import CA
    from tests.harness.registries import RegistrySet

pytestmark = pytest.mark.e2e

T = TypeVar("T")

USER, PASSWORD = "prober", "s3cret-Pa55word-not-in-messages"
CANARY_REPO = "platform/canary"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def probe_once(endpoint: str, canary: str | None = None, **options: object) -> ProbeResult:
    async def go() -> ProbeResult:
        async with RegistryClient(**options) as client:  # type: ignore[arg-type]
            return await client.probe(endpoint, canary)

    return run(go())


@pytest.fixture(scope="module")
def ca_pem(ca: CA) -> str:
    return ca.cert_pem.decode()


@pytest.fixture(scope="module")
def canary_digest(registries: RegistrySet, ca: CA) -> str:
    return oci.push_image(registries["eastus"].endpoint, CANARY_REPO, "1", verify=ca.ssl_context())


@pytest.fixture(scope="module")
def basic_registry(ca: CA) -> Iterator[Registry]:
    with Registry("probes-basic", ca, auth=(USER, PASSWORD)) as registry:
        yield registry


@pytest.fixture(scope="module")
def token_server(ca: CA) -> Iterator[TokenServer]:
    with TokenServer(ca, users={USER: PASSWORD}, expires_in=300) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(ca: CA, token_server: TokenServer) -> Iterator[Registry]:
    with Registry("probes-token", ca, extra_config={"auth": token_server.registry_auth_config()}) as registry:
        yield registry


# -- reachability and faults -----------------------------------------------------------------------


def test_probe_ok_against_a_live_replica(registries: RegistrySet, ca_pem: str) -> None:
    result = probe_once(registries["eastus"].endpoint, ca_bundle=ca_pem)
    assert result.outcome is Outcome.OK, result
    assert result.status == 200
    assert 0 < result.latency_seconds < 2


def test_untrusted_ca_is_a_tls_failure(registries: RegistrySet) -> None:
    result = probe_once(registries["eastus"].endpoint)  # system trust does not know the run's CA
    assert result.outcome is Outcome.TLS, result
    assert result.status is None
    assert "certificate" in result.message
    assert "\n" not in result.message


def test_plain_http_against_a_tls_port_is_not_the_registry_api(registries: RegistrySet) -> None:
    # http:// against a TLS port: the registry answers 400, which is not the registry API.
    result = probe_once(registries["eastus"].endpoint, scheme="http")
    assert result.outcome is Outcome.NOT_FOUND, result
    assert result.status == 400


def test_killed_registry_is_a_connect_failure(fault_registry: Registry, ca_pem: str) -> None:
    async def scenario() -> tuple[ProbeResult, ProbeResult, ProbeResult]:
        async with RegistryClient(ca_bundle=ca_pem, timeout_seconds=2) as client:
            before = await client.probe(fault_registry.endpoint)  # leaves a pooled keep-alive connection
            fault_registry.stop()
            during = await client.probe(fault_registry.endpoint)
            fault_registry.heal()
            after = await client.probe(fault_registry.endpoint)
            return before, during, after

    before, during, after = run(scenario())
    assert before.outcome is Outcome.OK
    assert during.outcome is Outcome.CONNECT, during
    assert during.status is None
    assert "refused" in during.message
    assert after.outcome is Outcome.OK, after


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-connection", "pooled-connection"])
def test_paused_registry_times_out_within_the_timeout(fault_registry: Registry, ca_pem: str, warm: bool) -> None:
    timeout = 1.0

    async def scenario() -> tuple[ProbeResult, float]:
        async with RegistryClient(ca_bundle=ca_pem, timeout_seconds=timeout) as client:
            if warm:
                assert (await client.probe(fault_registry.endpoint)).outcome is Outcome.OK
            fault_registry.pause()
            began = time.monotonic()
            result = await client.probe(fault_registry.endpoint, canary=f"{CANARY_REPO}:1")
            return result, time.monotonic() - began

    result, elapsed = run(scenario())
    assert result.outcome is Outcome.TIMEOUT, result
    assert result.status is None
    assert elapsed < timeout + 1.0, elapsed
    assert result.latency_seconds < timeout + 1.0


def test_unresolvable_host_is_a_connect_failure() -> None:
    result = probe_once("geopin-no-such-host.invalid:443", timeout_seconds=2)
    assert result.outcome in (Outcome.CONNECT, Outcome.TIMEOUT), result  # a slow resolver may time out
    assert result.status is None


# -- canary and digests ----------------------------------------------------------------------------


def test_canary_ok_when_present_and_not_found_when_absent(
    registries: RegistrySet, ca_pem: str, canary_digest: str
) -> None:
    endpoint = registries["eastus"].endpoint

    async def scenario() -> list[ProbeResult]:
        async with RegistryClient(ca_bundle=ca_pem) as client:
            return [
                await client.probe(endpoint, f"{CANARY_REPO}:1"),
                await client.probe(endpoint, f"{CANARY_REPO}@{canary_digest}"),
                await client.probe(endpoint, f"{CANARY_REPO}:absent"),
                await client.probe(endpoint, "platform/no-such-repo:1"),
                # Not replicated to westus: the canary says so.
                await client.probe(registries["westus"].endpoint, f"{CANARY_REPO}:1"),
            ]

    by_tag, by_digest, absent_tag, absent_repo, other_replica = run(scenario())
    assert by_tag.outcome is Outcome.OK, by_tag
    assert by_tag.status == 200
    assert canary_digest in by_tag.message
    assert by_digest.outcome is Outcome.OK, by_digest
    for result in (absent_tag, absent_repo, other_replica):
        assert result.outcome is Outcome.NOT_FOUND, result
        assert result.status == 404


def test_manifest_digest_matches_the_pushed_digest(registries: RegistrySet, ca_pem: str, canary_digest: str) -> None:
    endpoint = registries["eastus"].endpoint

    async def scenario() -> tuple[str | None, str | None, str | None]:
        async with RegistryClient(ca_bundle=ca_pem) as client:
            return (
                await client.manifest_digest(endpoint, CANARY_REPO, "1"),
                await client.manifest_digest(endpoint, CANARY_REPO, "absent"),
                await client.manifest_digest(endpoint, "platform/no-such-repo", "1"),
            )

    present, absent_tag, absent_repo = run(scenario())
    assert present == canary_digest
    assert absent_tag is None
    assert absent_repo is None


def test_manifest_digest_raises_on_failures(fault_registry: Registry, ca_pem: str) -> None:
    fault_registry.stop()

    async def scenario() -> None:
        async with RegistryClient(ca_bundle=ca_pem) as client:
            await client.manifest_digest(fault_registry.endpoint, CANARY_REPO, "1")

    with pytest.raises(ProbeError) as caught:
        run(scenario())
    assert caught.value.outcome is Outcome.CONNECT


# -- basic auth ------------------------------------------------------------------------------------


def test_basic_auth_registry(basic_registry: Registry, ca: CA, ca_pem: str) -> None:
    endpoint = basic_registry.endpoint
    oci.push_image(endpoint, CANARY_REPO, "1", verify=ca.ssl_context(), auth=(USER, PASSWORD))
    canary = f"{CANARY_REPO}:1"
    good = BasicCredentials(USER, PASSWORD)
    bad = BasicCredentials(USER, "wrong-password")

    async def scenario() -> dict[str, ProbeResult]:
        async with (
            RegistryClient(ca_bundle=ca_pem) as anonymous,
            RegistryClient(ca_bundle=ca_pem, credentials=good) as authenticated,
            RegistryClient(ca_bundle=ca_pem, credentials=bad) as refused,
        ):
            return {
                "ping-anonymous": await anonymous.probe(endpoint),
                "canary-anonymous": await anonymous.probe(endpoint, canary),
                "canary-authenticated": await authenticated.probe(endpoint, canary),
                "canary-authenticated-again": await authenticated.probe(endpoint, canary),
                "absent-authenticated": await authenticated.probe(endpoint, f"{CANARY_REPO}:absent"),
                "canary-wrong-password": await refused.probe(endpoint, canary),
            }

    results = run(scenario())
    assert results["ping-anonymous"].outcome is Outcome.OK  # 401 with a challenge: the registry is up
    assert results["ping-anonymous"].status == 401
    assert results["canary-anonymous"].outcome is Outcome.UNAUTHORIZED
    assert results["canary-authenticated"].outcome is Outcome.OK, results["canary-authenticated"]
    assert results["canary-authenticated-again"].outcome is Outcome.OK
    assert results["absent-authenticated"].outcome is Outcome.NOT_FOUND
    assert results["canary-wrong-password"].outcome is Outcome.UNAUTHORIZED
    for result in results.values():
        assert PASSWORD not in repr(result)
    assert PASSWORD not in repr(good)


def test_credentials_from_a_dockerconfigjson_secret_work(basic_registry: Registry, ca: CA, ca_pem: str) -> None:
    endpoint = basic_registry.endpoint
    oci.push_image(endpoint, CANARY_REPO, "1", verify=ca.ssl_context(), auth=(USER, PASSWORD))
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = {"auths": {"contoso.azurecr.io": {"auth": "eDp5"}, f"https://{endpoint}": {"auth": auth}}}
    secret_data = {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}
    found = credentials_for(endpoint, [parse_dockerconfig(secret_data)])
    assert found is not None
    credentials = BasicCredentials(found.username, found.password)
    assert credentials == BasicCredentials(USER, PASSWORD)
    result = probe_once(endpoint, f"{CANARY_REPO}:1", ca_bundle=ca_pem, credentials=credentials)
    assert result.outcome is Outcome.OK, result


# -- token auth ------------------------------------------------------------------------------------


def push_with_token(registry: Registry, server: TokenServer, ca: CA, repo: str, tag: str) -> str:
    token = server.issue(USER, (f"repository:{repo}:pull,push",))
    with httpx.Client(
        base_url=registry.url, verify=ca.ssl_context(), headers={"Authorization": f"Bearer {token}"}
    ) as client:
        return oci.push(client, repo, tag, oci.build_image({"token.txt": b"token auth\n"}))


def test_bearer_token_flow_and_caching(
    token_registry: Registry, token_server: TokenServer, ca: CA, ca_pem: str
) -> None:
    endpoint = token_registry.endpoint
    digest = push_with_token(token_registry, token_server, ca, CANARY_REPO, "1")
    canary = f"{CANARY_REPO}:1"
    now = [time.monotonic()]

    def clock() -> float:
        return now[0]

    async def scenario() -> dict[str, object]:
        results: dict[str, object] = {}
        async with (
            RegistryClient(ca_bundle=ca_pem, credentials=BasicCredentials(USER, PASSWORD), clock=clock) as client,
            RegistryClient(ca_bundle=ca_pem) as anonymous,
            RegistryClient(ca_bundle=ca_pem, credentials=BasicCredentials(USER, "wrong")) as refused,
        ):
            hits = token_server.hits
            results["ping"] = await client.probe(endpoint)
            results["hits-after-ping"] = hits()
            results["canary-1"] = await client.probe(endpoint, canary)
            results["hits-after-canary-1"] = hits()
            results["canary-2"] = await client.probe(endpoint, canary)
            results["digest"] = await client.manifest_digest(endpoint, CANARY_REPO, "1")
            results["hits-after-cached"] = hits()
            results["other-repo"] = await client.probe(endpoint, "platform/other:1")
            results["hits-after-other-scope"] = hits()
            now[0] += 300  # past expires_in (300) minus the margin: the next use fetches a new token
            results["canary-expired"] = await client.probe(endpoint, canary)
            results["hits-after-expiry"] = hits()
            results["anonymous"] = await anonymous.probe(endpoint, canary)
            results["refused"] = await refused.probe(endpoint, canary)
        return results

    results = run(scenario())
    ping = results["ping"]
    assert isinstance(ping, ProbeResult)
    assert ping.outcome is Outcome.OK
    assert ping.status == 401
    assert "bearer" in ping.message
    assert results["hits-after-ping"] == 0  # a ping needs no token
    for key in ("canary-1", "canary-2", "canary-expired"):
        result = results[key]
        assert isinstance(result, ProbeResult)
        assert result.outcome is Outcome.OK, (key, result)
        assert result.status == 200
    assert results["digest"] == digest
    assert results["hits-after-canary-1"] == 1
    assert results["hits-after-cached"] == 1  # the second probe and the digest lookup reused the token
    other = results["other-repo"]
    assert isinstance(other, ProbeResult)
    assert other.outcome is Outcome.NOT_FOUND  # authorised for its own scope, and absent
    assert results["hits-after-other-scope"] == 2
    assert results["hits-after-expiry"] == 3
    for key in ("anonymous", "refused"):
        result = results[key]
        assert isinstance(result, ProbeResult)
        assert result.outcome is Outcome.UNAUTHORIZED, (key, result)
    scopes = {r.scopes for r in token_server.requests if r.status == 200}
    assert scopes == {(f"repository:{CANARY_REPO}:pull",), ("repository:platform/other:pull",)}
    assert all(r.service == token_server.service for r in token_server.requests)
    for result in results.values():
        for token in token_server.issued:
            assert token not in repr(result)
        assert PASSWORD not in repr(result)


def test_unreachable_token_server_is_reported_not_raised(ca: CA, ca_pem: str, token_server: TokenServer) -> None:
    auth = token_server.registry_auth_config()
    auth["token"]["realm"] = f"https://127.0.0.1:{procs.free_port()}/token"  # nothing listens there
    with Registry("probes-token-down", ca, extra_config={"auth": auth}) as registry:
        ping = probe_once(registry.endpoint, ca_bundle=ca_pem)
        canary = probe_once(registry.endpoint, f"{CANARY_REPO}:1", ca_bundle=ca_pem)
    assert ping.outcome is Outcome.OK  # the registry itself is up
    assert canary.outcome is Outcome.CONNECT, canary
    assert canary.status is None
