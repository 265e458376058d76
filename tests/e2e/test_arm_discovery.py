"""ARM replica discovery through the real operator process (`geopin run`), its real credential and transport.

The operator runs with nothing but environment and flags: ``--arm-endpoint`` points it at the local HTTPS
ARM fake (tests.harness.armserver), ``SSL_CERT_FILE`` makes aiohttp's default context (azure-core's
transport with ``connection_verify=True``) trust the run's test CA as well as the system roots, and
``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` make azure-identity's ``DefaultAzureCredential`` take its App
Service managed-identity path to a local token endpoint (tests.harness.msiserver) that hands out the
bearer token ARM insists on.

The policy lists only eastus (a real local registry); ARM adds westus (regional endpoint disabled:
Excluded) and centralus. Discovered replicas get ``contoso.<region>.geo.azurecr.io`` endpoints, which do
not resolve here, so centralus ends Unhealthy: that is expected, and eastus stays the active region.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from kubernetes import client

from tests.harness.armserver import ArmReplica, ArmServer, trust_bundle
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.msiserver import MsiServer
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "contoso.azurecr.io"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
POLICY = "arm-discovery"
NAMESPACE = "armdisc"
SUBSCRIPTION = "7d3c2a51-8e4f-4b0a-9c61-2f5e8a9b1c04"
RESOURCE_GROUP = "platform-rg"
TOKEN = "arm-token-from-managed-identity"
REFRESH_SECONDS = 30  # the CRD's minimum


@dataclass
class Setup:
    api: Any
    apps: Any
    custom: Any
    registries: RegistrySet
    arm: ArmServer
    msi: MsiServer
    operator: Operator

    @property
    def east(self) -> str:
        return self.registries["eastus"].endpoint

    def start_operator(self) -> None:
        self.operator.start("--arm-endpoint", self.arm.url)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY).get("status", {})
        return status

    def condition(self, type_: str) -> dict[str, Any] | None:
        for condition in self.status().get("conditions") or []:
            if condition.get("type") == type_:
                return dict(condition)
        return None

    def condition_is(self, type_: str, value: str) -> dict[str, Any] | None:
        condition = self.condition(type_)
        return condition if condition is not None and condition.get("status") == value else None

    def replicas(self) -> dict[str, dict[str, Any]]:
        return {row["region"]: row for row in self.status().get("replicas") or []}

    def replicas_are(self, *regions: str) -> dict[str, dict[str, Any]] | None:
        """The status rows when they list exactly ``regions``, in that order."""
        replicas = self.replicas()
        return replicas if list(replicas) == list(regions) else None

    def image(self, name: str) -> str:
        return str(self.apps.read_namespaced_deployment(name, NAMESPACE).spec.template.spec.containers[0].image)


def _arm_replicas() -> list[ArmReplica]:
    return [ArmReplica("East US"), ArmReplica("West US", region_endpoint_enabled=False), ArmReplica("centralus")]


def _policy(ca: CA, east: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "registry": REGISTRY,
            "region": "eastus",
            "replicas": [{"region": "eastus", "endpoint": east}],
            "azure": {
                "subscriptionId": SUBSCRIPTION,
                "resourceGroup": RESOURCE_GROUP,
                "registryName": "contoso",
                "refreshSeconds": REFRESH_SECONDS,
            },
            "probe": {"caBundle": ca.cert_pem.decode()},
            "replicationCheck": False,  # the images are never pushed
        },
    }


def _deployment(name: str) -> dict[str, Any]:
    return deployment(name, f"{REGISTRY}/team/{name}:1", labels={"app": name})


@pytest.fixture(scope="module")
def setup(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    install_crd(control_plane)
    workdir = tmp_path_factory.mktemp("arm-discovery")
    bundle = trust_bundle(ca, workdir)
    with (
        RegistrySet(ca) as registries,
        ArmServer(
            ca, subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, registry_name="contoso", token=TOKEN
        ) as arm,
        MsiServer(TOKEN) as msi,
        control_plane.api_client() as api,
    ):
        arm.replicas = _arm_replicas()
        # No service principal or workload identity in the environment: DefaultAzureCredential must reach
        # ManagedIdentityCredential, and that must pick App Service (no IDENTITY_SERVER_THUMBPRINT).
        assert not {"AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_SERVER_THUMBPRINT"} & set(os.environ)
        operator = Operator(control_plane, workdir, env={**msi.env, "SSL_CERT_FILE": str(bundle)})
        s = Setup(api, client.AppsV1Api(api), client.CustomObjectsApi(api), registries, arm, msi, operator)
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        try:
            s.start_operator()
            s.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, _policy(ca, s.east))
            s.apps.create_namespaced_deployment(NAMESPACE, _deployment("web"))
            yield s
        finally:
            try:
                if not operator.alive():
                    s.start_operator()  # its finalizer restores the workloads
                try:
                    s.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
                except client.ApiException as e:
                    if e.status != 404:
                        raise
                wait_until(
                    lambda: not s.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"],
                    timeout=60,
                    what="policy gone (finalizer ran)",
                )
                for d in s.apps.list_namespaced_deployment(NAMESPACE).items:
                    image = d.spec.template.spec.containers[0].image
                    assert image == f"{REGISTRY}/team/{d.metadata.name}:1", f"{d.metadata.name} not restored: {image}"
            finally:
                operator.stop()
                # Gone before the next file starts: a terminating namespace keeps its Deployments
                # for seconds, and a later policy for the same registry would count and pin them.
                s.apps.delete_collection_namespaced_deployment(NAMESPACE)
                wait_until(
                    lambda: not s.apps.list_namespaced_deployment(NAMESPACE).items,
                    timeout=30,
                    what="armdisc Deployments deleted",
                )
                core.delete_namespace(NAMESPACE)


def test_discovered_replicas_are_merged_after_the_spec_and_excluded_ones_marked(setup: Setup) -> None:
    s = setup
    started = time.monotonic()
    wait_until(lambda: s.image("web") == f"{s.east}/team/web:1", timeout=60, what="web pinned to eastus")
    pinned_after = time.monotonic() - started

    replicas = wait_until(
        lambda: (r := s.replicas()) and r.get("centralus", {}).get("state") == "Unhealthy" and r,
        timeout=30,
        what="the three replicas in status, centralus probed to Unhealthy",
    )
    assert list(replicas) == ["eastus", "westus", "centralus"], replicas  # the spec first, then ARM's order
    assert replicas["eastus"]["endpoint"] == s.east  # the spec's endpoint wins over the derived one
    assert replicas["eastus"]["state"] == "Healthy"
    assert replicas["westus"]["state"] == "Excluded"
    assert replicas["westus"]["endpoint"] == "contoso.westus.geo.azurecr.io"
    assert replicas["centralus"]["endpoint"] == "contoso.centralus.geo.azurecr.io"

    condition = wait_until(
        lambda: s.condition("ControlPlaneUnavailable"), timeout=15, what="ControlPlaneUnavailable condition"
    )
    assert condition["status"] == "False", condition
    assert condition["reason"] == "ArmReachable", condition
    status = s.status()
    assert status["activeRegion"] == "eastus"
    assert status["activeEndpoint"] == s.east

    # The token came from the managed-identity endpoint through azure-identity's App Service path ...
    msi = s.msi.snapshot()
    assert msi, "the operator never asked the managed-identity endpoint for a token"
    assert all(r.header_ok and r.status == 200 for r in msi), msi
    assert {r.resource for r in msi} == {s.arm.url}, msi  # scope <arm-endpoint>/.default → resource
    assert {tuple(r.query["api-version"]) for r in msi} == {("2019-08-01",)}
    # ... and ARM saw it: every request authorised, at the subscription/group/registry of spec.azure.
    assert s.arm.requests, "ARM was never called"
    assert all(r.authorized for r in s.arm.requests), s.arm.requests
    assert {r.path for r in s.arm.requests} == {s.arm.list_path}
    print(f"pinned to eastus after {pinned_after:.1f}s; msi requests {len(msi)}, arm requests {s.arm.request_count}")


def test_arm_down_keeps_the_data_plane_and_reports_control_plane_unavailable(setup: Setup) -> None:
    s = setup
    wait_until(lambda: s.image("web") == f"{s.east}/team/web:1", timeout=60, what="web pinned to eastus")
    msi_before = s.msi.request_count

    # Restart with ARM already down: the new process has no last-known list.
    s.operator.stop()
    s.arm.stop()
    arm_before = s.arm.request_count
    restarted = time.monotonic()
    s.start_operator()

    condition = wait_until(
        lambda: s.condition_is("ControlPlaneUnavailable", "True"),
        timeout=60,
        what="ControlPlaneUnavailable True after a restart with ARM down",
    )
    down_after = time.monotonic() - restarted
    assert condition["reason"] == "ArmUnreachable", condition
    assert "ARM unreachable" in condition["message"], condition
    assert s.arm.request_count == arm_before  # nothing reached the stopped ARM
    assert s.msi.request_count > msi_before, "the restarted process fetched its own token"

    # The data plane goes on: the spec's eastus replica is probed by the new process and is the only one
    # known; a workload created now is pinned to it.
    wait_until(
        lambda: (s.operator.metric("geopin_probe_duration_seconds_count", policy=POLICY, region="eastus") or 0) >= 2,
        timeout=30,
        what="the restarted operator probes eastus",
        ignore=(httpx.HTTPError,),
    )
    replicas = wait_until(
        lambda: s.replicas_are("eastus"),
        timeout=30,
        what="status lists only the spec's replica (no last-known ARM list after a restart)",
    )
    assert replicas["eastus"]["state"] == "Healthy", replicas
    s.apps.create_namespaced_deployment(NAMESPACE, _deployment("api"))
    wait_until(lambda: s.image("api") == f"{s.east}/team/api:1", timeout=60, what="api pinned to eastus, ARM down")
    assert s.image("web") == f"{s.east}/team/web:1"
    assert s.status()["activeRegion"] == "eastus"

    # ARM comes back: the next refresh (refreshSeconds after the failed one) clears the condition.
    s.arm.start()
    healed = time.monotonic()
    condition = wait_until(
        lambda: s.condition_is("ControlPlaneUnavailable", "False"),
        timeout=REFRESH_SECONDS + 15,
        what="ControlPlaneUnavailable False once ARM is back",
    )
    healed_after = time.monotonic() - healed
    assert condition["reason"] == "ArmReachable", condition
    assert s.arm.request_count > arm_before
    assert all(r.authorized for r in s.arm.requests[arm_before:])
    replicas = wait_until(
        lambda: s.replicas_are("eastus", "westus", "centralus"),
        timeout=15,
        what="the discovered replicas are back in status",
    )
    assert replicas["westus"]["state"] == "Excluded", replicas
    assert s.image("api") == f"{s.east}/team/api:1"
    print(f"ControlPlaneUnavailable True {down_after:.1f}s after the restart, False {healed_after:.1f}s after ARM")
