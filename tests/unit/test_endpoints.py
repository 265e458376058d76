"""Azure Container Registry endpoint names for the four clouds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.core.endpoints import (
    ACR_SUFFIXES,
    RegionalHost,
    data_endpoint,
    is_acr,
    parse_regional,
    regional_endpoint,
    registry_name,
)


def test_the_four_clouds() -> None:
    assert ACR_SUFFIXES == ("azurecr.io", "azurecr.cn", "azurecr.us", "azurecr.de")


@pytest.mark.parametrize("suffix", ["azurecr.io", "azurecr.cn", "azurecr.us", "azurecr.de"])
def test_regional_and_data_endpoints_per_cloud(suffix: str) -> None:
    login = f"contoso.{suffix}"
    assert is_acr(login)
    assert regional_endpoint(login, "westus") == f"contoso.westus.geo.{suffix}"
    assert data_endpoint(login, "westus") == f"contoso.westus.data.{suffix}"
    assert regional_endpoint(login, "chinanorth3") == f"contoso.chinanorth3.geo.{suffix}"


def test_login_server_case_is_normalised() -> None:
    assert is_acr("Contoso.AzureCR.io")
    assert regional_endpoint("Contoso.AzureCR.io", "eastus") == "contoso.eastus.geo.azurecr.io"
    assert data_endpoint("CONTOSO.AZURECR.US", "usgovvirginia") == "contoso.usgovvirginia.data.azurecr.us"


@pytest.mark.parametrize(
    "login",
    [
        "docker.io",
        "ghcr.io",
        "localhost:5000",
        "127.0.0.1:5000",
        "contoso.azurecr.io:443",  # a port makes it something else than the login server
        "contoso.azurecr.io.evil.com",
        "contoso.azurecr.com",
        "contoso.azurecr.io.",
        "azurecr.io",
        ".azurecr.io",
        "abcd.azurecr.io",  # registry names are 5-50 characters
        "a" * 51 + ".azurecr.io",
        "con-toso.azurecr.io",  # alphanumeric only
        "con_toso.azurecr.io",
        "contoso.westus.geo.azurecr.io",  # a regional endpoint is not a global login server
        "contoso.westus.data.azurecr.io",
        "sub.contoso.azurecr.io",
        "contoso.azurecr.io\n",
        "[::1]:5000",
        "",
    ],
)
def test_non_acr_registries(login: str) -> None:
    assert not is_acr(login)
    with pytest.raises(ValueError, match="not an Azure Container Registry login server"):
        regional_endpoint(login, "westus")
    with pytest.raises(ValueError, match="not an Azure Container Registry login server"):
        data_endpoint(login, "westus")


@pytest.mark.parametrize(
    "login", ["xcontoso.azurecr.io", "abcde.azurecr.io", "a" * 50 + ".azurecr.cn", "c0nt0s0.azurecr.us"]
)
def test_edge_acr_names_are_acr(login: str) -> None:
    assert is_acr(login)
    name = login.split(".", 1)[0]
    assert regional_endpoint(login, "eastus").startswith(f"{name}.eastus.geo.")


@pytest.mark.parametrize("region", ["", "West-US", "westus ", "west_us", "WestUS", "west.us", "eastus\n", "global/x"])
def test_invalid_region_names(region: str) -> None:
    with pytest.raises(ValueError, match="invalid Azure region name"):
        regional_endpoint("contoso.azurecr.io", region)
    with pytest.raises(ValueError, match="invalid Azure region name"):
        data_endpoint("contoso.azurecr.io", region)


@pytest.mark.parametrize(
    ("login", "name"),
    [
        ("contoso.azurecr.io", "contoso"),
        ("Contoso.azurecr.cn", "contoso"),
        ("contoso.azurecr.io:443", "contoso"),
        ("registry.example.com", "registry"),
        ("localhost:5000", "localhost"),
    ],
)
def test_registry_name_is_first_label(login: str, name: str) -> None:
    assert registry_name(login) == name


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("contoso.westus.geo.azurecr.io", RegionalHost("contoso", "westus", "azurecr.io", "geo")),
        ("contoso.westus.data.azurecr.io", RegionalHost("contoso", "westus", "azurecr.io", "data")),
        ("Contoso.WestUS.Geo.AzureCR.cn", RegionalHost("contoso", "westus", "azurecr.cn", "geo")),
        ("contoso.usgovarizona.geo.azurecr.us", RegionalHost("contoso", "usgovarizona", "azurecr.us", "geo")),
        ("contoso.germanycentral.data.azurecr.de", RegionalHost("contoso", "germanycentral", "azurecr.de", "data")),
        ("contoso.azurecr.io", None),
        ("contoso.westus.geo.azurecr.io:443", None),
        ("contoso.westus.geo.azurecr.io.evil.com", None),
        ("contoso.westus.geo.azurecr.com", None),
        ("contoso.westus.cdn.azurecr.io", None),
        ("contoso.west-us.geo.azurecr.io", None),
        ("con-toso.westus.geo.azurecr.io", None),
        ("abc.westus.geo.azurecr.io", None),
        ("x.contoso.westus.geo.azurecr.io", None),
        ("contoso.westus.geo.azurecr.io\n", None),
        ("contoso.westus\n.geo.azurecr.io", None),
        ("localhost:5000", None),
        ("", None),
    ],
)
def test_parse_regional(host: str, expected: RegionalHost | None) -> None:
    assert parse_regional(host) == expected


_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=5, max_size=50)
_REGIONS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)


@given(_NAMES, _REGIONS, st.sampled_from(ACR_SUFFIXES))
def test_parse_regional_round_trips(name: str, region: str, suffix: str) -> None:
    login = f"{name}.{suffix}"
    assert parse_regional(regional_endpoint(login, region)) == RegionalHost(name, region, suffix, "geo")
    assert parse_regional(data_endpoint(login, region)) == RegionalHost(name, region, suffix, "data")
    assert registry_name(login) == name
    assert parse_regional(login) is None
    assert not is_acr(regional_endpoint(login, region))
