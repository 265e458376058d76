"""A malformed RegistryPolicy is rejected by the real API server, with a message naming the field."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import install_crd

if TYPE_CHECKING:
    from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
VALID: dict[str, Any] = {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus"}, {"region": "westus"}]}


def _create(control_plane: ControlPlane, name: str, spec: dict[str, Any]) -> client.ApiException | None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryPolicy", "metadata": {"name": name}, "spec": spec}
    with control_plane.api_client() as api:
        custom: Any = client.CustomObjectsApi(api)
        try:
            custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body, dry_run="All")
        except client.ApiException as e:
            return e
    return None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"replicas": [{"region": "eastus"}]}, "spec.registry", id="registry-missing"),
        pytest.param({**VALID, "registry": "https://contoso.azurecr.io"}, "spec.registry", id="registry-with-scheme"),
        pytest.param({**VALID, "region": "East US"}, "spec.region", id="region-pattern"),
        pytest.param({**VALID, "mode": "Rewrite"}, "spec.mode", id="mode-enum"),
        pytest.param({**VALID, "fallback": "Nowhere"}, "spec.fallback", id="fallback-enum"),
        pytest.param({**VALID, "probe": {"failureThreshold": 0}}, "spec.probe.failureThreshold", id="threshold-min"),
        pytest.param({**VALID, "probe": {"intervalSeconds": 99999}}, "spec.probe.intervalSeconds", id="interval-max"),
        pytest.param(
            {**VALID, "probe": {"intervalSeconds": 2, "timeoutSeconds": 5}},
            "spec.probe.timeoutSeconds",
            id="cel-timeout",
        ),
        pytest.param({**VALID, "replicas": [{"region": "EastUS"}]}, "spec.replicas[0].region", id="replica-region"),
        pytest.param(
            {**VALID, "replicas": [{"region": "eastus"}, {"region": "eastus"}]},
            "spec.replicas[1]",
            id="duplicate-region",
        ),
        pytest.param(
            {"registry": "127.0.0.1:5000", "replicas": [{"region": "eastus"}]},
            "spec.replicas",
            id="non-acr-no-endpoint",
        ),
        pytest.param({"registry": "contoso.azurecr.io"}, "spec", id="no-replicas-no-azure"),
        pytest.param({**VALID, "pullSecrets": "Sometimes"}, "spec.pullSecrets", id="pull-secrets-enum"),
        pytest.param({**VALID, "replicas": [{"region": "auto"}]}, "spec.replicas[0].region", id="replica-auto"),
        pytest.param(
            {**VALID, "replicas": [{"region": "eastus", "endpoint": "contoso.westus.geo.azurecr.io"}]},
            "spec.replicas[0].endpoint",
            id="endpoint-of-another-region",
        ),
        pytest.param(
            {
                "registry": "registry.contoso.com",
                "replicas": [
                    {"region": "a", "endpoint": "m.contoso.com"},
                    {"region": "b", "endpoint": "m.contoso.com"},
                ],
            },
            "spec.replicas",
            id="duplicate-endpoint",
        ),
        pytest.param(
            {"registry": "r.contoso.com:0", "replicas": [{"region": "a", "endpoint": "m.contoso.com"}]},
            "spec.registry",
            id="registry-port-0",
        ),
        pytest.param(
            {"registry": "r.contoso.com", "replicas": [{"region": "a", "endpoint": "m.contoso.com:65536"}]},
            "spec.replicas[0].endpoint",
            id="endpoint-port-65536",
        ),
    ],
)
def test_api_server_rejects_malformed_policy(control_plane: ControlPlane, spec: dict[str, Any], field: str) -> None:
    install_crd(control_plane)
    error = _create(control_plane, "bad", spec)
    assert error is not None, "the API server accepted a malformed policy"
    assert error.status == 422
    message = json.loads(error.body or "{}")["message"]
    assert field in message, message


def test_api_server_accepts_and_defaults_a_valid_policy(control_plane: ControlPlane) -> None:
    install_crd(control_plane)
    with control_plane.api_client() as api:
        custom: Any = client.CustomObjectsApi(api)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryPolicy", "metadata": {"name": "ok"}, "spec": VALID}
        created = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body, dry_run="All")
    spec = created["spec"]
    assert spec["mode"] == "Patch"
    assert spec["fallback"] == "Global"
    assert spec["region"] == "auto"
    assert spec["probe"]["failureThreshold"] == 3
    assert spec["probe"]["failbackDelaySeconds"] == 300
