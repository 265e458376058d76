"""Admission mode through MutatingAdmissionPolicy, chosen automatically where the API server serves it.

On an API server that serves MutatingAdmissionPolicy, `geopin run` (default --admission-mechanism
auto) finds the version by discovery (v1 on Kubernetes 1.36, v1beta1 on 1.35 with the feature on; the
module runs on both) and keeps a policy, a binding and a params ConfigMap; the API server pins Pods
itself. A failover rewrites only the ConfigMap, and with the operator stopped new Pods are
still pinned: Pod creation does not depend on the operator at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.controlplane import ControlPlane
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import MapApiServer
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "mapolicy.azurecr.io"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"


@pytest.fixture(scope="module")
def cluster(ca: CA, map_api_server: MapApiServer) -> Iterator[ControlPlane]:
    server = map_api_server
    with ControlPlane(ca=ca, binaries=server.binaries, extra_apiserver_args=server.apiserver_args) as cp:
        yield cp


def test_the_api_server_pins_pods_even_with_the_operator_down(
    cluster: ControlPlane, ca: CA, map_api_server: MapApiServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    group, version = map_api_server.api_version.split("/")
    install_crd(cluster)
    api: Any = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    admission: Any = client.CustomObjectsApi(api)
    for namespace in ("geopin-system", "shop"):
        core.create_namespace({"metadata": {"name": namespace}})
    with RegistrySet(ca) as registries:
        east, west = registries["eastus"].endpoint, registries["westus"].endpoint
        operator = Operator(cluster, tmp_path_factory.mktemp("map-operator"))
        operator.start()
        assert (
            f"Admission mode through MutatingAdmissionPolicy (the API server serves {map_api_server.api_version})"
            in operator.log()
        )
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "mapolicy"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "mode": "Admission",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )

        def params() -> dict[str, str]:
            try:
                data: dict[str, str] = core.read_namespaced_config_map("geopin-mapolicy", "geopin-system").data
            except client.ApiException:
                return {}
            return data

        wait_until(lambda: params().get("endpoint") == east, timeout=60, what="params point to eastus")
        # The API server picks new admission policies up through informers: wait until one acts.
        probe_number = iter(range(1000))

        def a_probe_pod_is_pinned() -> bool:
            name = f"probe-{next(probe_number)}"
            pod = core.create_namespaced_pod(
                "shop",
                {"metadata": {"name": name}, "spec": {"containers": [{"name": "p", "image": f"{REGISTRY}/p:1"}]}},
            )
            core.delete_namespaced_pod(name, "shop", grace_period_seconds=0)
            return bool(pod.spec.containers[0].image == f"{east}/p:1")

        wait_until(a_probe_pod_is_pinned, timeout=60, interval=0.5, what="the admission policy in effect")
        objects = admission.list_cluster_custom_object(group, version, "mutatingadmissionpolicies")["items"]
        # geopin-params-anchor keeps the API server's ConfigMap params informer alive (core.mutating_policy).
        assert sorted(o["metadata"]["name"] for o in objects) == ["geopin-mapolicy", "geopin-params-anchor"]

        apps.create_namespaced_deployment(
            "shop",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": f"{REGISTRY}/shop/web:1"}]},
                    },
                },
            },
        )

        def images() -> list[str]:
            pods = core.list_namespaced_pod("shop", label_selector="app=web").items
            return sorted(p.spec.containers[0].image for p in pods)

        wait_until(lambda: images() == [f"{east}/shop/web:1"], timeout=60, what="the Pod pinned to eastus")
        template = apps.read_namespaced_deployment("web", "shop").spec.template.spec.containers[0].image
        assert template == f"{REGISTRY}/shop/web:1"

        # A failover is one ConfigMap write; new Pods follow.
        registries["eastus"].stop()
        wait_until(lambda: params().get("endpoint") == west, timeout=60, what="params point to westus")
        apps.patch_namespaced_deployment_scale("web", "shop", {"spec": {"replicas": 2}})
        wait_until(
            lambda: images() == sorted([f"{east}/shop/web:1", f"{west}/shop/web:1"]),
            timeout=60,
            what="the new Pod on westus, the old one untouched",
        )

        # The operator is gone: the API server still pins.
        operator.stop()
        apps.patch_namespaced_deployment_scale("web", "shop", {"spec": {"replicas": 3}})
        wait_until(lambda: len(images()) == 3, timeout=60, what="a third Pod")
        assert images().count(f"{west}/shop/web:1") == 2

        operator.start()
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "mapolicy")
        wait_until(lambda: not params(), timeout=60, what="the params ConfigMap removed with the policy")
        remaining = admission.list_cluster_custom_object(group, version, "mutatingadmissionpolicies")["items"]
        assert [o["metadata"]["name"] for o in remaining] == ["geopin-params-anchor"]
        operator.stop()
    api.close()


def test_redirect_through_the_api_server_moves_new_pods_and_writes_no_template(
    cluster: ControlPlane, ca: CA, map_api_server: MapApiServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Patch mode, failover.strategy: Redirect (the default) where MutatingAdmissionPolicy is served:
    during the hold, the API server moves new Pods off the dead replica's host; no template is written.

    After the test above, whose policy deletion removed the last binding of geopin's own policies:
    without geopin's anchor binding the API server would never read these params (kubernetes#130887)."""
    install_crd(cluster)
    api: Any = cluster.api_client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    registry = "redirect.azurecr.io"
    for namespace in ("geopin-system", "orders"):
        try:
            core.create_namespace({"metadata": {"name": namespace}})
        except client.ApiException as e:
            if e.status != 409:
                raise
    with RegistrySet(ca) as registries:
        east, west = registries["eastus"].endpoint, registries["westus"].endpoint
        operator = Operator(cluster, tmp_path_factory.mktemp("map-redirect-operator"))
        operator.start()
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RegistryPolicy",
            "metadata": {"name": "orders"},
            "spec": {
                "registry": registry,
                "region": "eastus",
                "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                "probe": {"caBundle": ca.cert_pem.decode(), "intervalSeconds": 1, "timeoutSeconds": 1,
                          "failureThreshold": 2},
                "replicationCheck": False,
            },
        })  # fmt: skip
        apps.create_namespaced_deployment("orders", {
            "metadata": {"name": "api"},
            "spec": {
                # No kubelet here, so no rollout ever completes: Pods only after the pin, from one ReplicaSet.
                "replicas": 0,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api"}},
                             "spec": {"containers": [{"name": "api", "image": f"{registry}/orders/api:1"}]}},
            },
        })  # fmt: skip

        def template() -> str:
            return str(apps.read_namespaced_deployment("api", "orders").spec.template.spec.containers[0].image)

        def params() -> dict[str, str]:
            try:
                data: dict[str, str] = core.read_namespaced_config_map("geopin-redirect-orders", "geopin-system").data
            except client.ApiException:
                return {}
            return data

        def images() -> list[str]:
            pods = core.list_namespaced_pod("orders", label_selector="app=api").items
            return sorted(p.spec.containers[0].image for p in pods)

        def path() -> dict[str, Any] | None:
            status = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "orders").get("status") or {}
            return next((c for c in status.get("conditions") or [] if c["type"] == "FailoverPath"), None)

        try:
            wait_until(lambda: template() == f"{east}/orders/api:1", timeout=60, what="the template pinned to eastus")
            condition = wait_until(path, timeout=30, what="the FailoverPath condition")
            assert (condition["status"], condition["reason"]) == ("True", "Redirect"), condition
            assert "MutatingAdmissionPolicy" in condition["message"], condition
            wait_until(lambda: params().get("unusable") == "", timeout=30, what="the redirect's params, idle")
            mark = cluster.audit_line_count()

            registries["eastus"].stop()
            wait_until(lambda: params().get("unusable") == east.lower(), timeout=60, what="eastus listed unusable")
            assert params()["endpoint"] == west
            probes = iter(range(1000))

            def a_probe_pod_is_redirected() -> bool:
                name = f"probe-{next(probes)}"
                spec = {"containers": [{"name": "p", "image": f"{east}/orders/api:1"}]}
                pod = core.create_namespaced_pod("orders", {"metadata": {"name": name}, "spec": spec})
                core.delete_namespaced_pod(name, "orders", grace_period_seconds=0)
                return bool(pod.spec.containers[0].image == f"{west}/orders/api:1")

            # The API server reads the params through an informer: a moment after the write, Pods follow.
            wait_until(a_probe_pod_is_redirected, timeout=30, interval=0.2, what="the API server redirecting")
            apps.patch_namespaced_deployment_scale("api", "orders", {"spec": {"replicas": 1}})
            wait_until(lambda: images() == [f"{west}/orders/api:1"], timeout=60, what="the Pod redirected to westus")
            assert template() == f"{east}/orders/api:1"  # the hold: the template keeps its pin
            assert cluster.audit_writes(mark, "deployments", operator.user) == 0
            # one write per switch: the params ConfigMap, nothing else of geopin's admission objects
            assert cluster.audit_writes(mark, "configmaps", operator.user) == 1
            assert cluster.audit_writes(mark, "mutatingadmissionpolicies", operator.user) == 0
        finally:
            registries["eastus"].heal()
            custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "orders")
            wait_until(lambda: not params(), timeout=60, what="the redirect's objects removed with the policy")
            operator.stop()
            apps.delete_namespaced_deployment("api", "orders")
            api.close()
