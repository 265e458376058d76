"""geopin.io.azure.ArmDiscovery against a local HTTPS server that answers ARM's replications list shape.

ARM itself cannot be reached from here; tests.harness.armserver is the one sanctioned fake. The real
SDK (azure-mgmt-containerregistry's aio client, azure-core's aiohttp transport, retry and bearer-token
policies) talks to it over TLS signed by the run's test CA.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from azure.core.credentials import AccessToken

from geopin.core.policy import AzureDiscovery
from geopin.io.azure import ArmDiscovery, DiscoveryResult, default_credential_scopes, normalize_location
from tests.harness.armserver import ArmReplica, ArmServer, Mode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from types import TracebackType

    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
GROUP = "platform-rg"
LOGIN_SERVER = "contoso.azurecr.io"
TOKEN = "test-arm-token"
SETTINGS = AzureDiscovery(subscription_id=SUBSCRIPTION, resource_group=GROUP, registry_name="contoso")
# Stall test budget: refresh() must give up after TIMEOUT; allow generous scheduling slack on a busy CI host.
TIMEOUT = 1.5
SLACK = 3.0


class StaticCredential:
    """An AsyncTokenCredential that hands out one fixed bearer token and records the scopes asked for."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()


def three_replicas() -> list[ArmReplica]:
    return [ArmReplica("eastus"), ArmReplica("westus"), ArmReplica("centralus")]


@pytest.fixture
def arm(ca: CA) -> Iterator[ArmServer]:
    with ArmServer(ca, subscription_id=SUBSCRIPTION, resource_group=GROUP, token=TOKEN) as server:
        server.replicas = three_replicas()
        yield server


def discovery(
    arm: ArmServer, ca: CA, credential: StaticCredential | None = None, **kwargs: Any
) -> tuple[ArmDiscovery, StaticCredential]:
    credential = credential or StaticCredential()
    options: dict[str, Any] = {
        "timeout": TIMEOUT,
        "retries": 1,
        "retry_backoff": 0.0,
        "connection_verify": str(ca.cert_path),
    }
    options.update(kwargs)
    client = ArmDiscovery(SETTINGS, LOGIN_SERVER, credential=credential, base_url=arm.url, **options)
    return client, credential


def run(arm: ArmServer, ca: CA, scenario: Callable[[ArmDiscovery], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        client, _ = discovery(arm, ca, **kwargs)
        async with client:
            await scenario(client)

    asyncio.run(main())


def regions(result: DiscoveryResult) -> list[str]:
    return [r.region for r in result.replicas]


# -- listing ------------------------------------------------------------------------------------------


def test_lists_every_replica_across_pages(arm: ArmServer, ca: CA) -> None:
    credential = StaticCredential()

    async def main() -> None:
        client, _ = discovery(arm, ca, credential=credential)
        async with client:
            assert client.last == DiscoveryResult(replicas=(), fresh=False, error=None, fetched_at=None)
            before = time.monotonic()
            result = await client.refresh()
            assert client.last is result
        assert result.fresh
        assert result.error is None
        assert result.fetched_at is not None
        assert result.fetched_at >= before
        assert regions(result) == ["eastus", "westus", "centralus"]
        assert [r.endpoint for r in result.replicas] == [
            "contoso.eastus.geo.azurecr.io",
            "contoso.westus.geo.azurecr.io",
            "contoso.centralus.geo.azurecr.io",
        ]
        assert all(r.provisioning_state == "Succeeded" and r.status == "Ready" for r in result.replicas)
        assert not any(r.excluded for r in result.replicas)

    asyncio.run(main())
    # Two pages: the first request without a skip token, the second following nextLink with one.
    assert arm.request_count == 2
    first, second = arm.requests
    assert first.path == second.path == arm.list_path
    assert "$skipToken" not in first.query
    assert second.query["$skipToken"] == ["2"]
    assert first.query["api-version"] == second.query["api-version"]
    assert first.authorized
    assert second.authorized
    # The token was asked for the scope derived from the endpoint; a caller's credential stays open.
    assert credential.scopes
    assert set(credential.scopes) == {(f"{arm.url}/.default",)}
    assert not credential.closed


def test_location_is_normalised(arm: ArmServer, ca: CA) -> None:
    arm.replicas = [ArmReplica("East US"), ArmReplica("West US 2"), ArmReplica("centralus")]

    async def scenario(client: ArmDiscovery) -> None:
        result = await client.refresh()
        assert result.fresh
        assert regions(result) == ["eastus", "westus2", "centralus"]
        assert result.replicas[1].endpoint == "contoso.westus2.geo.azurecr.io"

    run(arm, ca, scenario)


def test_region_endpoint_disabled_is_excluded(arm: ArmServer, ca: CA) -> None:
    arm.replicas = [
        ArmReplica("eastus", region_endpoint_enabled=None),  # property absent: enabled
        ArmReplica("westus", region_endpoint_enabled=False, message="taken out for a DR rehearsal"),
        ArmReplica("centralus", region_endpoint_enabled=True),
    ]

    async def scenario(client: ArmDiscovery) -> None:
        result = await client.refresh()
        by_region = {r.region: r for r in result.replicas}
        assert by_region["eastus"].region_endpoint_enabled
        assert not by_region["eastus"].excluded
        assert not by_region["westus"].region_endpoint_enabled
        assert by_region["westus"].excluded
        assert by_region["westus"].message == "taken out for a DR rehearsal"
        assert not by_region["centralus"].excluded

    run(arm, ca, scenario)


def test_replica_not_provisioned_is_excluded(arm: ArmServer, ca: CA) -> None:
    arm.replicas = [
        ArmReplica("eastus"),
        ArmReplica("westus", provisioning_state="Updating", display_status="Syncing"),
    ]

    async def scenario(client: ArmDiscovery) -> None:
        result = await client.refresh()
        eastus, westus = result.replicas
        assert not eastus.excluded
        assert westus.provisioning_state == "Updating"
        assert westus.status == "Syncing"
        assert westus.region_endpoint_enabled
        assert westus.excluded

    run(arm, ca, scenario)


# -- failures keep the last known list ----------------------------------------------------------------


def test_server_error_keeps_last_list_then_recovers(arm: ArmServer, ca: CA) -> None:
    async def scenario(client: ArmDiscovery) -> None:
        good = await client.refresh()
        assert good.fresh
        requests = arm.request_count

        arm.mode = Mode.ERROR
        arm.replicas = [ArmReplica("eastus")]  # not served while failing
        failed = await client.refresh()
        assert not failed.fresh
        assert failed.replicas == good.replicas
        assert failed.fetched_at == good.fetched_at
        assert failed.error is not None
        assert "HTTP 500" in failed.error
        assert "InternalServerError" in failed.error
        assert "\n" not in failed.error
        assert client.last is failed
        # The SDK's retry policy ran: one try plus the configured single retry.
        assert arm.request_count == requests + 2

        arm.heal()
        recovered = await client.refresh()
        assert recovered.fresh
        assert recovered.error is None
        assert regions(recovered) == ["eastus"]
        assert recovered.fetched_at is not None
        assert good.fetched_at is not None
        assert recovered.fetched_at > good.fetched_at

    run(arm, ca, scenario)


def test_server_stopped_keeps_last_list_then_recovers(arm: ArmServer, ca: CA) -> None:
    async def scenario(client: ArmDiscovery) -> None:
        good = await client.refresh()
        assert good.fresh

        arm.stop()
        requests = arm.request_count
        failed = await client.refresh()
        assert not failed.fresh
        assert failed.replicas == good.replicas
        assert failed.fetched_at == good.fetched_at
        assert failed.error is not None
        assert failed.error.startswith("ARM unreachable: ")
        assert "\n" not in failed.error
        assert arm.request_count == requests  # nothing reached a handler

        arm.start()
        recovered = await client.refresh()
        assert recovered.fresh
        assert recovered.error is None
        assert regions(recovered) == regions(good)

    run(arm, ca, scenario)


def test_stalled_server_is_bounded_by_the_timeout(arm: ArmServer, ca: CA) -> None:
    async def scenario(client: ArmDiscovery) -> None:
        good = await client.refresh()
        assert good.fresh

        arm.stall()
        requests = arm.request_count
        started = time.monotonic()
        failed = await client.refresh()
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT + SLACK, f"refresh took {elapsed:.1f}s with a {TIMEOUT}s timeout"
        assert elapsed >= TIMEOUT * 0.5  # it did wait for an answer rather than fail fast
        assert arm.request_count > requests  # the request reached the server and was held there
        assert not failed.fresh
        assert failed.replicas == good.replicas
        assert failed.error is not None
        assert failed.error.startswith("ARM unreachable: ")

        arm.heal()
        recovered = await client.refresh()
        assert recovered.fresh
        assert regions(recovered) == regions(good)

    run(arm, ca, scenario)


def test_rejected_token_is_reported_without_the_token(arm: ArmServer, ca: CA) -> None:
    wrong = StaticCredential(token="not-the-right-token")

    async def scenario(client: ArmDiscovery) -> None:
        result = await client.refresh()
        assert not result.fresh
        assert result.replicas == ()
        assert result.fetched_at is None
        assert result.error is not None
        assert "HTTP 401" in result.error
        assert "AuthenticationFailed" in result.error
        assert wrong.token not in result.error
        assert TOKEN not in result.error

    run(arm, ca, scenario, credential=wrong)
    assert arm.requests
    assert not any(r.authorized for r in arm.requests)


def test_unusable_location_keeps_last_list(arm: ArmServer, ca: CA) -> None:
    async def scenario(client: ArmDiscovery) -> None:
        good = await client.refresh()
        arm.replicas = [ArmReplica("eastus"), ArmReplica("east-us!")]
        failed = await client.refresh()
        assert not failed.fresh
        assert failed.replicas == good.replicas
        assert failed.error is not None
        assert "east-us!" in failed.error

    run(arm, ca, scenario)


def test_untrusted_certificate_is_a_failed_refresh(arm: ArmServer, ca: CA) -> None:
    async def scenario(client: ArmDiscovery) -> None:
        result = await client.refresh()
        assert not result.fresh
        assert result.error is not None
        assert result.error.startswith("ARM unreachable: ")
        assert "certificate" in result.error.lower()

    # The system trust store does not know the run's CA.
    run(arm, ca, scenario, connection_verify=True)
    assert arm.request_count == 0


# -- construction -------------------------------------------------------------------------------------


def test_scopes_follow_the_arm_endpoint() -> None:
    assert default_credential_scopes("https://management.azure.com") == ["https://management.azure.com/.default"]
    assert default_credential_scopes("https://management.usgovcloudapi.net/") == [
        "https://management.core.usgovcloudapi.net/.default"
    ]
    assert default_credential_scopes("https://127.0.0.1:8443") == ["https://127.0.0.1:8443/.default"]
    assert normalize_location(" North Central US ") == "northcentralus"


def test_needs_an_acr_login_server() -> None:
    with pytest.raises(ValueError, match="not an Azure Container Registry"):
        ArmDiscovery(SETTINGS, "registry.example.com:5000", credential=StaticCredential())
