"""The kubelet's pull-failure Events trigger an immediate probe of the replica they name.

With a 60 s probe interval, a dead replica would otherwise be noticed up to a minute late. An Event
naming its endpoint (posted through the API exactly as the kubelet posts it) makes geopin probe it
at once; an Event naming a healthy replica triggers a probe and switches nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
REGISTRY = "pulls.azurecr.io"


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    install_crd(control_plane)
    with RegistrySet(ca) as registries:
        api: Any = control_plane.api_client()
        core: Any = client.CoreV1Api(api)
        apps: Any = client.AppsV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": "pulls"}})
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "pulls"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode(), "intervalSeconds": 60, "timeoutSeconds": 2},
                    "replicationCheck": False,
                },
            },
        )
        apps.create_namespaced_deployment(
            "pulls",
            deployment("app", f"{REGISTRY}/team/app:1"),
        )
        operator = Operator(control_plane, tmp_path_factory.mktemp("pull-signal-operator"))
        operator.start()
        east = registries["eastus"].endpoint

        def image() -> str:
            return str(apps.read_namespaced_deployment("app", "pulls").spec.template.spec.containers[0].image)

        wait_until(lambda: image() == f"{east}/team/app:1", timeout=60, what="pinned to eastus")
        yield {"core": core, "registries": registries, "operator": operator, "image": image}
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "pulls")
        wait_until(lambda: image() == f"{REGISTRY}/team/app:1", timeout=60, what="restored")
        operator.stop()
        core.delete_namespace("pulls")
        api.close()


def _kubelet_event(core: Any, host: str, reason: str = "Failed", type_: str = "Warning") -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.create_namespaced_event(
        "pulls",
        {
            "metadata": {"generateName": "app-pod."},
            "involvedObject": {"kind": "Pod", "namespace": "pulls", "name": "app-pod", "apiVersion": "v1"},
            "reason": reason,
            "message": f'Failed to pull image "{host}/team/app:1": rpc error: code = Unknown desc = i/o timeout',
            "type": type_,
            "source": {"component": "kubelet", "host": "node-0"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )


def _probes(operator: Operator, region: str) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("geopin_probe_duration_seconds_count{") and f'region="{region}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_pull_error_on_a_healthy_replica_probes_it_and_switches_nothing(env: dict[str, Any]) -> None:
    operator: Operator = env["operator"]
    east = env["registries"]["eastus"].endpoint
    wait_until(lambda: _probes(operator, "eastus") >= 1, timeout=30, what="the first probe")
    before = _probes(operator, "eastus")
    _kubelet_event(env["core"], east)
    wait_until(lambda: _probes(operator, "eastus") > before, timeout=10, what="an immediate probe of eastus")
    assert env["image"]() == f"{east}/team/app:1"


def test_only_warning_events_reach_geopin(env: dict[str, Any]) -> None:
    """The Events watch is filtered by the API server (type=Warning, Pods): Normal ones never arrive."""
    operator: Operator = env["operator"]
    east = env["registries"]["eastus"].endpoint

    def signals(reason: str) -> int:
        return operator.log().count(f"a pull from eastus failed ({reason})")

    normal_before, warning_before = signals("Failed"), signals("BackOff")
    _kubelet_event(env["core"], east, reason="Failed", type_="Normal")  # sent first: the watch keeps order
    _kubelet_event(env["core"], east, reason="BackOff")
    wait_until(lambda: signals("BackOff") > warning_before, timeout=10, what="the Warning event's probe")
    assert signals("Failed") == normal_before, "a Normal event was delivered to geopin"


def test_a_pull_error_on_a_dead_replica_fails_it_over_within_seconds(env: dict[str, Any]) -> None:
    registries: RegistrySet = env["registries"]
    east, west = registries["eastus"].endpoint, registries["westus"].endpoint
    registries["eastus"].stop()
    try:
        began = time.monotonic()
        _kubelet_event(env["core"], east, reason="BackOff")
        wait_until(lambda: env["image"]() == f"{west}/team/app:1", timeout=20, what="failover after the pull error")
        elapsed = time.monotonic() - began
        print(f"pull error -> failover in {elapsed:.1f}s with a 60 s probe interval")
        assert elapsed < 20
    finally:
        registries["eastus"].heal()
