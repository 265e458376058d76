"""Replica discovery through Azure Resource Manager (azure-mgmt-containerregistry + azure-identity).

:class:`ArmDiscovery` lists a registry's geo-replications with one ARM call (following ``nextLink`` pages)
and turns each into a :class:`DiscoveredReplica`. It never raises for network, TLS, HTTP, credential or
payload errors: a failed refresh returns the *last known* list with ``fresh=False`` and a one-line
``error`` (the design's "ARM unreachable → keep the last known list; report ControlPlaneUnavailable").

Transport settings (checked against azure-core 1.41 / azure-mgmt-core 1.6 / azure-mgmt-containerregistry 15):

- ``base_url`` is the client's positional ``base_url`` parameter; the generated operations format every
  request URL (and the path of every ``nextLink``) against it.
- ``connection_verify``, ``connection_timeout`` and ``read_timeout`` are keyword arguments the client
  passes through ``AsyncARMPipelineClient`` to the default ``AioHttpTransport``, whose
  ``ConnectionConfiguration`` reads them (azure/core/configuration.py); a string is a CA bundle path
  (``ssl.create_default_context(cafile=...)`` in azure/core/pipeline/transport/_aiohttp.py).
- ``retry_total`` / ``retry_backoff_factor`` / ``retry_backoff_max`` go to ``AsyncRetryPolicy``, which by
  default retries 408/429/5xx and connection/read errors up to 10 times with exponential backoff.
- ``credential_scopes``: ``AsyncARMChallengeAuthenticationPolicy`` asks the credential for these scopes.
  By default they follow ``base_url``: the known clouds' ARM endpoints use azure-mgmt-core's own scopes
  (US Government's differs from its host), any other endpoint ``<base_url>/.default``.

Time bound: every :meth:`ArmDiscovery.refresh` (token, every page, every retry and backoff) runs under
``asyncio.timeout(timeout)`` — 30 s by default — and each socket connect/read under the same limit, so a
stalled ARM (a half-dead region) costs at most ``timeout`` seconds per refresh, never the SDK's 300 s
socket defaults times its retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Self

from azure.core import AzureClouds
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerregistry.aio import ContainerRegistryManagementClient
from azure.mgmt.core.tools import get_arm_endpoints

from geopin.core import endpoints
from geopin.core.text import one_line

if TYPE_CHECKING:
    from types import TracebackType

    from azure.core.credentials_async import AsyncTokenCredential

    from geopin.core.policy import AzureDiscovery

__all__ = ["DEFAULT_ARM_URL", "ArmDiscovery", "DiscoveredReplica", "DiscoveryResult", "normalize_location"]

log = logging.getLogger(__name__)

DEFAULT_ARM_URL = "https://management.azure.com"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRIES = 2
_SUCCEEDED = "succeeded"
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class DiscoveredReplica:
    """One geo-replication as ARM reports it."""

    region: str  # ARM location, lower-cased, spaces removed ("East US" -> "eastus")
    endpoint: str  # geopin.core.endpoints.regional_endpoint(login_server, region)
    provisioning_state: str  # e.g. "Succeeded"
    status: str  # properties.status.displayStatus or ""
    message: str  # properties.status.message or ""
    region_endpoint_enabled: bool  # properties.regionEndpointEnabled (True when absent)

    @property
    def excluded(self) -> bool:
        """Out of routing: a platform team disabled its regional endpoint, or it is not (yet) provisioned."""
        return not self.region_endpoint_enabled or self.provisioning_state.lower() != _SUCCEEDED


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    replicas: tuple[DiscoveredReplica, ...]  # the last known list (kept when ARM fails)
    fresh: bool  # False when this refresh failed and the list is the previous one
    error: str | None  # one line, no secrets
    fetched_at: float | None  # time.monotonic() of the last successful fetch


_EMPTY = DiscoveryResult(replicas=(), fresh=False, error=None, fetched_at=None)


def normalize_location(location: str) -> str:
    """ARM location (``"East US"`` or ``"eastus"``) → region name (``"eastus"``)."""
    return "".join(location.split()).lower()


def default_credential_scopes(base_url: str) -> list[str]:
    """The token scopes for an ARM endpoint: the known clouds' own, else ``<base_url>/.default``."""
    wanted = base_url.rstrip("/").lower()
    for cloud in AzureClouds:
        known = get_arm_endpoints(cloud)
        if str(known["resource_manager"]).rstrip("/").lower() == wanted:
            return list(known["credential_scopes"])
    return [f"{base_url.rstrip('/')}/.default"]


class UnusableReplica(ValueError):
    """ARM answered, but a replication in the answer cannot be used (no location, bad region name)."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _replica(item: Any, login_server: str) -> DiscoveredReplica:
    location = _text(getattr(item, "location", None))
    region = normalize_location(location)
    if not region:
        raise UnusableReplica(f"replication {_text(getattr(item, 'name', None))!r} has no location")
    try:
        endpoint = endpoints.regional_endpoint(login_server, region)
    except ValueError as e:
        raise UnusableReplica(f"replication location {location!r}: {e}") from e
    properties = getattr(item, "properties", None)
    status = getattr(properties, "status", None)
    enabled = getattr(properties, "region_endpoint_enabled", None)
    return DiscoveredReplica(
        region=region,
        endpoint=endpoint,
        provisioning_state=_text(getattr(properties, "provisioning_state", None)),
        status=_text(getattr(status, "display_status", None)),
        message=_text(getattr(status, "message", None)),
        region_endpoint_enabled=True if enabled is None else bool(enabled),
    )


# aiohttp names the SSL context in connect errors ("ssl:<ssl.SSLContext object at 0x7f…>"): an address that
# changes on every refresh would make every status write differ.
_NOISE_RE = re.compile(r"\s*ssl:(?:<[^>]*>|\S+)|\s*<[^<>]* object at 0x[0-9a-f]+>")


def _one_line(text: str) -> str:
    return one_line(_NOISE_RE.sub("", text), _MAX_ERROR_CHARS)


def describe_error(error: BaseException, timeout: float) -> str:
    """One line for status and logs. Built from types, status codes and ARM error codes, never headers."""
    if isinstance(error, TimeoutError):
        return f"ARM unreachable: no answer within {timeout:g}s"
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        inner = error.inner_exception or error
        return _one_line(f"ARM unreachable: {type(inner).__name__} {inner}")
    if isinstance(error, DecodeError):
        return _one_line(f"ARM answered an unreadable body: {error.message}")
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        detail = ""
        if error.error is not None:
            detail = f" {error.error.code}: {error.error.message}"
        elif error.reason:
            detail = f" {error.reason}"
        return _one_line(f"ARM answered HTTP {error.status_code}{detail}")
    if isinstance(error, ClientAuthenticationError):  # raised by the credential, before any request
        return _one_line(f"ARM credential failed: {type(error).__name__} {error.message}")
    if isinstance(error, AzureError):
        return _one_line(f"ARM request failed: {type(error).__name__} {error.message}")
    if isinstance(error, UnusableReplica):
        return _one_line(f"ARM answered an unusable replica: {error}")
    return _one_line(f"ARM answered an unusable replica list: {type(error).__name__} {error}")


class ArmDiscovery:
    """Discovers one registry's geo-replicas from ARM and remembers the last list that worked.

    Refreshes are serialised; the caller schedules them (``settings.refresh_seconds``). The client, and a
    ``DefaultAzureCredential`` made when no credential is given, are closed by :meth:`aclose`; a credential
    passed in belongs to the caller.
    """

    def __init__(
        self,
        settings: AzureDiscovery,
        login_server: str,
        *,
        credential: AsyncTokenCredential | None = None,
        base_url: str = DEFAULT_ARM_URL,
        connection_verify: str | bool = True,
        credential_scopes: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = 0.5,
    ) -> None:
        if not endpoints.is_acr(login_server):
            raise ValueError(
                f"{login_server!r} is not an Azure Container Registry login server; "
                "ARM discovery derives <name>.<region>.geo.<suffix> endpoints from it"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.settings = settings
        self.login_server = login_server
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.credential_scopes = list(credential_scopes or default_credential_scopes(self.base_url))
        self._owns_credential = credential is None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._credential: AsyncTokenCredential = credential
        self._client = ContainerRegistryManagementClient(
            credential,
            settings.subscription_id,
            self.base_url,
            credential_scopes=self.credential_scopes,
            connection_verify=connection_verify,
            connection_timeout=timeout,
            read_timeout=timeout,
            retry_total=retries,
            retry_backoff_factor=retry_backoff,
            retry_backoff_max=max(1, int(timeout)),
        )
        self._last = _EMPTY
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def last(self) -> DiscoveryResult:
        return self._last

    async def refresh(self) -> DiscoveryResult:
        """List the replications once (all pages). On any failure keep the previous list, ``fresh=False``."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("ArmDiscovery is closed")
            try:
                async with asyncio.timeout(self.timeout):
                    replicas = await self._fetch()
            except (AzureError, TimeoutError, ValueError, TypeError, AttributeError, KeyError) as e:
                message = describe_error(e, self.timeout)
                log.warning(
                    "replica discovery for %s (%s/%s) failed, keeping %d known replicas: %s",
                    self.login_server,
                    self.settings.resource_group,
                    self.settings.registry_name,
                    len(self._last.replicas),
                    message,
                )
                self._last = DiscoveryResult(
                    replicas=self._last.replicas, fresh=False, error=message, fetched_at=self._last.fetched_at
                )
            else:
                self._last = DiscoveryResult(replicas=replicas, fresh=True, error=None, fetched_at=time.monotonic())
            return self._last

    async def _fetch(self) -> tuple[DiscoveredReplica, ...]:
        found: list[DiscoveredReplica] = []
        pages = self._client.replications.list(self.settings.resource_group, self.settings.registry_name)
        async for item in pages:
            found.append(_replica(item, self.login_server))
        return tuple(found)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.close()
        if self._owns_credential:
            await self._credential.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
