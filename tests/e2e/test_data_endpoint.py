"""The deep probe through ACR's data endpoint, against the ACR-shaped replicas.

geopin runs inside the environment's name space with no endpoint overrides: the policy says
`registry: contoso.azurecr.io` and regions, exactly as on AKS. Each replica answers blob downloads
with a 307 to `contoso.<region>.data.azurecr.io`; that data endpoint is taken down while the
replica's `/v2/` keeps answering, and the replica must go Unhealthy with reason `data_endpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness import oci
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment, pull_secret, registry_policy
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.acr import AcrRegistrySet
    from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
POLICY = "contoso-deep"
NAMESPACE = "deep"
CANARY = "platform/canary:1"
APP = "deep/app:1"


@pytest.fixture(scope="module")
def deep(control_plane: ControlPlane, acr: AcrRegistrySet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    install_crd(control_plane)
    for region in acr:
        with acr[region].client() as http:
            for ref in (CANARY, APP):
                repo, tag = ref.split(":")
                oci.push(http, repo, tag, oci.build_image({"ref": ref.encode()}))
    api: Any = control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    apps: Any = client.AppsV1Api(api)
    for namespace in ("geopin-system", NAMESPACE):
        try:
            core.create_namespace({"metadata": {"name": namespace}})
        except client.ApiException as e:
            if e.status != 409:
                raise
    core.create_namespaced_secret("geopin-system", pull_secret("acr-pull", acr.login_server, acr.auth))
    spec = {
        # As on AKS: the global login server and regions; every endpoint is derived.
        "registry": acr.login_server,
        "region": "eastus",
        "replicas": [{"region": "eastus"}, {"region": "westus"}],
        "probe": {"canaryImage": CANARY, "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
        "credentials": {"secretRef": {"namespace": "geopin-system", "name": "acr-pull"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
    }
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, registry_policy(POLICY, spec))
    apps.create_namespaced_deployment(NAMESPACE, deployment("app", f"{acr.login_server}/{APP}"))
    operator = Operator(control_plane, tmp_path_factory.mktemp("deep-operator"), names=acr)
    operator.start()

    def image() -> str:
        return str(apps.read_namespaced_deployment("app", NAMESPACE).spec.template.spec.containers[0].image)

    try:
        wait_until(lambda: image() == f"{acr['eastus'].host}/{APP}", timeout=60, what="pinned to eastus by name")
        yield {"custom": custom, "operator": operator, "image": image}
    finally:
        acr.heal()
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
        wait_until(lambda: image() == f"{acr.login_server}/{APP}", timeout=60, what="restored")
        operator.stop()
        core.delete_namespace(NAMESPACE)
        core.delete_namespaced_secret("acr-pull", "geopin-system")
        api.close()


def replica(custom: Any, region: str) -> dict[str, Any]:
    status = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY).get("status") or {}
    return next((r for r in status.get("replicas", []) if r["region"] == region), {})


def test_a_dead_data_endpoint_makes_its_replica_unhealthy_while_v2_answers(deep: Any, acr: AcrRegistrySet) -> None:
    custom, operator = deep["custom"], deep["operator"]
    east_data = acr["eastus"].data_host
    wait_until(lambda: replica(custom, "eastus").get("state") == "Healthy", timeout=30, what="eastus Healthy")
    assert f"via {east_data}" in replica(custom, "eastus")["message"]  # probes really go through it

    acr.data["eastus"].stop()
    with acr["eastus"].client() as http:
        assert http.get("/v2/").status_code == 200  # the login endpoint still answers

    wait_until(lambda: replica(custom, "eastus").get("state") == "Unhealthy", timeout=30, what="eastus Unhealthy")
    row = replica(custom, "eastus")
    assert row["message"].startswith(f"data endpoint {east_data}: connect"), row
    failures = operator.metric("geopin_probe_failures_total", policy=POLICY, region="eastus", reason="data_endpoint")
    assert failures is not None
    assert failures >= 2
    wait_until(lambda: deep["image"]() == f"{acr['westus'].host}/{APP}", timeout=30, what="repointed to westus")
    assert replica(custom, "westus")["state"] == "Healthy"

    # The registry's credentials never went to a data endpoint (ACR's data URLs are pre-signed).
    requests = [r for data in acr.data.values() for r in data.requests()]
    assert requests
    assert not any(r.authorization for r in requests)
