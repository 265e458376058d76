"""Azure Container Registry endpoint names: global login server, regional and data endpoints.

A registry ``contoso`` in the public cloud has the global login server ``contoso.azurecr.io``,
the regional endpoint ``contoso.<region>.geo.azurecr.io`` per geo-replica, and (with dedicated
data endpoints) ``contoso.<region>.data.azurecr.io`` for layer downloads. Sovereign clouds use the
same shapes under their own suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from geopin.core.references import split_host

__all__ = [
    "ACR_SUFFIXES",
    "REGION_RE",
    "RegionalHost",
    "arm_endpoint",
    "data_endpoint",
    "is_acr",
    "parse_regional",
    "regional_endpoint",
    "registry_name",
]

# Public cloud, Azure China, Azure US Government, Azure Germany (retired, still resolvable in old configs).
ACR_SUFFIXES = ("azurecr.io", "azurecr.cn", "azurecr.us", "azurecr.de")

# An Azure region name as the CRD's pattern has it (core.policy and the CLI check regions with it too).
REGION_RE = re.compile(r"^[a-z0-9]+$")
_NAME_RE = re.compile(r"^[a-z0-9]{5,50}\Z")


@dataclass(frozen=True, slots=True)
class RegionalHost:
    registry: str  # the registry name, e.g. "contoso"
    region: str
    suffix: str  # e.g. "azurecr.io"
    kind: str  # "geo" (regional login endpoint) or "data"


def _acr_parts(login_server: str) -> tuple[str, str] | None:
    name, port = split_host(login_server)
    if port is not None:
        return None
    for suffix in ACR_SUFFIXES:
        head, dot, tail = name.partition(".")
        if dot and tail == suffix and _NAME_RE.match(head):
            return head, suffix
    return None


def is_acr(login_server: str) -> bool:
    """True for a global ACR login server (``<name>.azurecr.<cloud>``), not for regional ones."""
    return _acr_parts(login_server) is not None


def registry_name(login_server: str) -> str:
    """The first DNS label: the registry's name in Azure Resource Manager."""
    return split_host(login_server)[0].split(".", 1)[0]


def regional_endpoint(login_server: str, region: str) -> str:
    """``contoso.azurecr.io`` + ``westus`` → ``contoso.westus.geo.azurecr.io``."""
    return _endpoint(login_server, region, "geo")


def data_endpoint(login_server: str, region: str) -> str:
    """``contoso.azurecr.io`` + ``westus`` → ``contoso.westus.data.azurecr.io`` (dedicated data endpoint)."""
    return _endpoint(login_server, region, "data")


def _endpoint(login_server: str, region: str, kind: str) -> str:
    parts = _acr_parts(login_server)
    if parts is None:
        raise ValueError(
            f"{login_server!r} is not an Azure Container Registry login server "
            f"(<name>.{{{','.join(ACR_SUFFIXES)}}}); give each replica an explicit endpoint"
        )
    if not REGION_RE.fullmatch(region):
        raise ValueError(f"invalid Azure region name {region!r}: lower-case letters and digits only")
    name, suffix = parts
    return f"{name}.{region}.{kind}.{suffix}"


def parse_regional(host: str) -> RegionalHost | None:
    """Recognise ``<name>.<region>.geo|data.<suffix>``; None for any other host."""
    name, port = split_host(host)
    if port is not None:
        return None
    labels = name.split(".")
    if len(labels) != 5:
        return None
    registry, region, kind, suffix = labels[0], labels[1], labels[2], ".".join(labels[3:])
    if kind not in ("geo", "data") or suffix not in ACR_SUFFIXES:
        return None
    if not (_NAME_RE.match(registry) and REGION_RE.fullmatch(region)):
        return None
    return RegionalHost(registry=registry, region=region, suffix=suffix, kind=kind)


# Azure Resource Manager of the cloud each ACR suffix lives in.
_ARM_ENDPOINTS = {
    "azurecr.io": "https://management.azure.com",
    "azurecr.cn": "https://management.chinacloudapi.cn",
    "azurecr.us": "https://management.usgovcloudapi.net",
    "azurecr.de": "https://management.microsoftazure.de",
}


def arm_endpoint(login_server: str) -> str:
    """The ARM endpoint of the registry's cloud (public cloud for anything unrecognised)."""
    parts = _acr_parts(login_server)
    return _ARM_ENDPOINTS[parts[1]] if parts is not None else _ARM_ENDPOINTS["azurecr.io"]
