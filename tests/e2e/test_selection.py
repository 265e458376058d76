"""Selectors, several policies side by side, and a conflict between two policies for one registry.

- namespaceSelector and workloadSelector choose what a policy manages; a workload that stops
  matching is restored exactly.
- Two policies for two registries pin one workload's two images independently.
- A second, younger policy for an already-managed registry reports Conflict and acts on nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA
    from tests.harness.registries import RegistrySet

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
ALPHA, BETA = "alpha.azurecr.io", "beta.azurecr.io"


class Env:
    def __init__(self, cp: ControlPlane, registries: RegistrySet, ca: CA) -> None:
        self.api: Any = cp.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.registries = registries
        self.ca = ca

    def policy(self, name: str, registry: str, **spec: Any) -> None:
        self.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": name},
                "spec": {
                    "registry": registry,
                    "region": "eastus",
                    "replicas": [{"region": r, "endpoint": self.registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": self.ca.cert_pem.decode()},
                    "replicationCheck": False,
                    **spec,
                },
            },
        )

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name).get("status", {})
        return status

    def deploy(self, namespace: str, name: str, images: list[str], labels: dict[str, str] | None = None) -> None:
        self.apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": {"name": name, "labels": labels or {}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
                    },
                },
            },
        )

    def images(self, namespace: str, name: str) -> list[str]:
        d = self.apps.read_namespaced_deployment(name, namespace)
        return [c.image for c in d.spec.template.spec.containers]


@pytest.fixture(scope="module")
def env(
    control_plane: ControlPlane, registries: RegistrySet, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    install_crd(control_plane)
    env = Env(control_plane, registries, ca)
    env.core.create_namespace({"metadata": {"name": "sel-on", "labels": {"geopin": "on"}}})
    env.core.create_namespace({"metadata": {"name": "sel-off"}})
    operator = Operator(control_plane, tmp_path_factory.mktemp("selection-operator"))
    operator.start()
    yield env
    for name in ("alpha", "beta", "alpha-too"):
        try:
            env.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except client.ApiException as e:
            if e.status != 404:
                raise

    def gone() -> bool:
        names = {p["metadata"]["name"] for p in env.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]}
        return not names & {"alpha", "beta", "alpha-too"}

    wait_until(gone, timeout=60, what="policies gone")
    operator.stop()
    for namespace in ("sel-on", "sel-off"):
        env.core.delete_namespace(namespace)
    env.api.close()


def test_selectors_policies_side_by_side_and_a_conflict(env: Env) -> None:
    east = env.registries["eastus"].endpoint
    env.deploy("sel-on", "picked", [f"{ALPHA}/a:1", f"{BETA}/b:1"], labels={"tier": "web"})
    env.deploy("sel-on", "unlabelled", [f"{ALPHA}/a:1"])
    env.deploy("sel-off", "other-namespace", [f"{ALPHA}/a:1"], labels={"tier": "web"})
    env.policy(
        "alpha",
        ALPHA,
        namespaceSelector={"matchLabels": {"geopin": "on"}},
        workloadSelector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
    )
    env.policy("beta", BETA)

    # Both registries' images of one workload are pinned, each by its own policy.
    wait_until(
        lambda: env.images("sel-on", "picked") == [f"{east}/a:1", f"{east}/b:1"], timeout=60, what="both images pinned"
    )
    record = json.loads(
        env.apps.read_namespaced_deployment("picked", "sel-on").metadata.annotations["geopin.io/original-images"]
    )
    assert record == {"containers/c0": f"{ALPHA}/a:1", "containers/c1": f"{BETA}/b:1"}
    # Not selected: the workload selector and the namespace selector.
    wait_until(lambda: env.status("alpha").get("workloads", {}).get("skipped") == 2, timeout=30, what="2 skipped")
    assert env.images("sel-on", "unlabelled") == [f"{ALPHA}/a:1"]
    assert env.images("sel-off", "other-namespace") == [f"{ALPHA}/a:1"]

    # A younger policy for the same registry: Conflict, and it acts on nothing.
    env.policy("alpha-too", ALPHA, region="westus")
    conflict = wait_until(
        lambda: next((c for c in env.status("alpha-too").get("conditions", []) if c["reason"] == "Conflict"), None),
        timeout=30,
        what="Conflict condition",
    )
    assert conflict["status"] == "False"
    assert "alpha" in conflict["message"]
    assert env.images("sel-on", "picked") == [f"{east}/a:1", f"{east}/b:1"]

    # The workload stops matching: alpha restores its image exactly and keeps beta's pin.
    env.apps.patch_namespaced_deployment("picked", "sel-on", {"metadata": {"labels": {"tier": "batch"}}})
    wait_until(
        lambda: env.images("sel-on", "picked") == [f"{ALPHA}/a:1", f"{east}/b:1"], timeout=30, what="alpha restored"
    )
    annotations = env.apps.read_namespaced_deployment("picked", "sel-on").metadata.annotations
    assert json.loads(annotations["geopin.io/original-images"]) == {"containers/c1": f"{BETA}/b:1"}
    assert annotations["geopin.io/pinned-region"] == "eastus"


def test_gitops_managed_workloads_get_a_drift_warning(env: Env) -> None:
    east = env.registries["eastus"].endpoint
    env.apps.create_namespaced_deployment(
        "sel-on",
        {
            "metadata": {
                "name": "argo-app",
                "annotations": {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:sel-on/argo-app"},
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "argo-app"}},
                "template": {
                    "metadata": {"labels": {"app": "argo-app"}},
                    "spec": {"containers": [{"name": "c0", "image": f"{BETA}/argo:1"}]},
                },
            },
        },
    )
    wait_until(lambda: env.images("sel-on", "argo-app") == [f"{east}/argo:1"], timeout=60, what="pinned")

    def warned() -> list[Any]:
        events = env.core.list_namespaced_event("sel-on", field_selector="involvedObject.name=argo-app").items
        return [e for e in events if e.reason == "GitOpsDriftRisk"]

    event = wait_until(lambda: warned(), timeout=30, what="GitOpsDriftRisk Event")[0]
    assert event.type == "Warning"
    assert "Argo CD" in event.message
    assert "managedFieldsManagers" in event.message
    wait_until(
        lambda: env.status("beta").get("workloads", {}).get("gitOpsManaged") == 1, timeout=30, what="status count"
    )
