"""Replication awareness and digest pinning against real registries and a lagging replicator.

The home region is westus. An image pushed only to eastus must not be pinned to westus until the
replication emulator has copied it there: meanwhile the workload goes to the next replica that has
it (eastus), is reported as awaiting replication, and moves home once the copy lands.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.oci import build_image, push_image
from tests.harness.registries import RegistrySet
from tests.harness.replication import ReplicationEmulator
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "replcheck.azurecr.io"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
LAG = 8.0


@pytest.fixture(scope="module")
def setup(
    control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, RegistrySet, Operator]]:
    install_crd(control_plane)
    with RegistrySet(ca) as registries:
        api: Any = control_plane.api_client()
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": "repl"}})
        operator = Operator(control_plane, tmp_path_factory.mktemp("replication-operator"))
        operator.start()
        yield api, registries, operator
        for name in ("replication", "digests"):
            try:
                custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException as e:
                if e.status != 404:
                    raise
        wait_until(
            lambda: not custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"],
            timeout=60,
            what="policies gone (restored by the operator)",
        )
        operator.stop()
        core.delete_namespace("repl")
        api.close()


def _policy(name: str, registries: RegistrySet, ca: CA, registry: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": name},
        "spec": {
            "registry": registry,
            "region": "westus",
            "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("westus", "eastus", "centralus")],
            "probe": {"caBundle": ca.cert_pem.decode()},
            **spec,
        },
    }


def _deployment(name: str, image: str) -> dict[str, Any]:
    return deployment(name, image)


def test_not_pinned_to_a_region_before_the_image_replicates_there(
    setup: tuple[Any, RegistrySet, Operator], ca: CA, control_plane: ControlPlane
) -> None:
    api, registries, operator = setup
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    core: Any = client.CoreV1Api(api)
    push_image(registries["eastus"].endpoint, "team/fresh", "1", build_image({"v": b"1"}), verify=ca.ssl_context())
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, _policy("replication", registries, ca, REGISTRY))

    apps.create_namespaced_deployment("repl", _deployment("fresh", f"{REGISTRY}/team/fresh:1"))

    def image() -> str:
        return str(apps.read_namespaced_deployment("fresh", "repl").spec.template.spec.containers[0].image)

    east, west = registries["eastus"].endpoint, registries["westus"].endpoint
    wait_until(lambda: image() == f"{east}/team/fresh:1", timeout=60, what="pinned to eastus, which has the image")
    status = wait_until(
        lambda: (
            (s := custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "replication").get("status", {}))
            .get("workloads", {})
            .get("awaitingReplication")
            and s
        ),
        timeout=30,
        what="status counts the workload as awaiting replication",
    )
    assert status["workloads"]["awaitingReplication"] == 1
    assert operator.metric("geopin_replication_pending_workloads", policy="replication", region="westus") == 1
    wait_until(
        lambda: any(
            e.reason == "AwaitingReplication"
            for e in core.list_namespaced_event("repl", field_selector="involvedObject.name=fresh").items
        ),
        timeout=15,
        what="AwaitingReplication Event",
    )

    with ReplicationEmulator(registries["eastus"], [registries["westus"]], lags={"westus": LAG}) as emulator:
        wait_until(lambda: image() == f"{west}/team/fresh:1", timeout=LAG + 40, what="moved home once replicated")
        copied = [c for c in emulator.copies if c.target == "westus" and c.repo == "team/fresh"]
        assert copied, "the emulator copied the image"
        moved_at = time.monotonic()
        # Never pinned to westus before the copy existed there.
        assert moved_at >= copied[0].copied_at
    wait_until(
        lambda: (
            custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "replication")["status"]["workloads"][
                "awaitingReplication"
            ]
            == 0
        ),
        timeout=30,
        what="awaiting count back to 0",
    )
    audit = [
        e
        for e in control_plane.audit_events()
        if (e.get("objectRef") or {}).get("name") == "fresh" and e.get("verb") == "patch"
    ]
    assert audit, "geopin patched the workload"


def test_digest_pinning_appends_the_digest_and_keeps_it_on_failover(
    setup: tuple[Any, RegistrySet, Operator], ca: CA
) -> None:
    api, registries, _operator = setup
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    digest = ""
    for region in ("westus", "eastus", "centralus"):
        digest = push_image(
            registries[region].endpoint, "team/pinned", "2", build_image({"v": b"2"}), verify=ca.ssl_context()
        )
    registry = "fabrikam.azurecr.io"
    custom.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, _policy("digests", registries, ca, registry, digestPinning=True)
    )
    apps.create_namespaced_deployment("repl", _deployment("pinned", f"{registry}/team/pinned:2"))

    def image() -> str:
        return str(apps.read_namespaced_deployment("pinned", "repl").spec.template.spec.containers[0].image)

    west = registries["westus"].endpoint
    wait_until(lambda: image() == f"{west}/team/pinned:2@{digest}", timeout=60, what="pinned with the digest")

    # A new image under the same tag does not change what a failover points to.
    for region in ("westus", "eastus", "centralus"):
        push_image(registries[region].endpoint, "team/pinned", "2", build_image({"v": b"3"}), verify=ca.ssl_context())
    registries["westus"].stop()
    try:
        east = registries["eastus"].endpoint
        wait_until(lambda: image() == f"{east}/team/pinned:2@{digest}", timeout=60, what="failover keeps the digest")
    finally:
        registries["westus"].heal()
