"""Patch mode on every pod-template kind: Deployment, StatefulSet, DaemonSet, CronJob, standalone ReplicaSet.

Each has two containers and two init containers mixing the policy's registry with others. All are
pinned; a Deployment's own ReplicaSets are left to the Deployment controller; deleting the policy
gives every object back its spec byte for byte.
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

REGISTRY = "kinds.azurecr.io"
NAMESPACE = "kinds"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"


def pod_spec(name: str) -> dict[str, Any]:
    return {
        "initContainers": [
            {"name": "migrate", "image": f"{REGISTRY}/{name}/migrate:1"},
            {"name": "wait", "image": "busybox:1.36"},
        ],
        "containers": [
            {"name": "app", "image": f"{REGISTRY}/{name}/app:2"},
            {"name": "sidecar", "image": "mcr.microsoft.com/oss/envoyproxy/envoy:v1.31.0"},
        ],
    }


def template(name: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": name}}, "spec": pod_spec(name)}


OBJECTS: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    # kind: (api group/version, plural, spec, path to the pod spec)
    "Deployment": (
        "apps/v1",
        "deployments",
        {"replicas": 1, "selector": {"matchLabels": {"app": "deployment"}}, "template": template("deployment")},
        ("spec", "template", "spec"),
    ),
    "StatefulSet": (
        "apps/v1",
        "statefulsets",
        {
            "replicas": 0,
            "serviceName": "statefulset",
            "selector": {"matchLabels": {"app": "statefulset"}},
            "template": template("statefulset"),
        },
        ("spec", "template", "spec"),
    ),
    "DaemonSet": (
        "apps/v1",
        "daemonsets",
        {"selector": {"matchLabels": {"app": "daemonset"}}, "template": template("daemonset")},
        ("spec", "template", "spec"),
    ),
    "CronJob": (
        "batch/v1",
        "cronjobs",
        {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {"template": {"spec": {**pod_spec("cronjob"), "restartPolicy": "OnFailure"}}},
            },
        },
        ("spec", "jobTemplate", "spec", "template", "spec"),
    ),
    "ReplicaSet": (
        "apps/v1",
        "replicasets",
        {"replicas": 0, "selector": {"matchLabels": {"app": "replicaset"}}, "template": template("replicaset")},
        ("spec", "template", "spec"),
    ),
}


def dig(body: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        body = body[key]
    return body


class Kinds:
    def __init__(self, cp: ControlPlane) -> None:
        self.api: Any = cp.api_client()
        self.dynamic: Any = client.CustomObjectsApi(self.api)
        self.core: Any = client.CoreV1Api(self.api)

    def path(self, kind: str) -> str:
        group_version, plural, _, _ = OBJECTS[kind]
        prefix = "/api" if "/" not in group_version else "/apis"
        return f"{prefix}/{group_version}/namespaces/{NAMESPACE}/{plural}"

    def create(self, kind: str) -> None:
        group_version, _, spec, _ = OBJECTS[kind]
        body = {"apiVersion": group_version, "kind": kind, "metadata": {"name": kind.lower()}, "spec": spec}
        self.api.call_api(*self.api.param_serialize("POST", self.path(kind), body=body, auth_settings=["BearerToken"]))

    def get(self, kind: str) -> dict[str, Any]:
        request = self.api.param_serialize(
            "GET", f"{self.path(kind)}/{kind.lower()}", header_params={"Accept": "application/json"}
        )
        response = self.api.call_api(*request)
        response.read()
        body: dict[str, Any] = json.loads(response.data)
        return body

    def images(self, kind: str) -> dict[str, str]:
        spec = dig(self.get(kind), OBJECTS[kind][3])
        return {f"{lst}/{c['name']}": c["image"] for lst in ("initContainers", "containers") for c in spec[lst]}


@pytest.fixture(scope="module")
def kinds(control_plane: ControlPlane) -> Iterator[Kinds]:
    install_crd(control_plane)
    kinds = Kinds(control_plane)
    kinds.core.create_namespace({"metadata": {"name": NAMESPACE}})
    for kind in OBJECTS:
        kinds.create(kind)
    yield kinds
    kinds.core.delete_namespace(NAMESPACE)
    kinds.api.close()


def test_every_kind_is_pinned_and_restored_byte_for_byte(
    kinds: Kinds, control_plane: ControlPlane, registries: RegistrySet, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = {kind: kinds.get(kind)["spec"] for kind in OBJECTS}
    east = registries["eastus"].endpoint
    operator = Operator(control_plane, tmp_path_factory.mktemp("kinds-operator"))
    operator.start()
    try:
        kinds.dynamic.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "kinds"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )

        def expected(kind: str) -> dict[str, str]:
            name = kind.lower()
            return {
                "initContainers/migrate": f"{east}/{name}/migrate:1",
                "initContainers/wait": "busybox:1.36",
                "containers/app": f"{east}/{name}/app:2",
                "containers/sidecar": "mcr.microsoft.com/oss/envoyproxy/envoy:v1.31.0",
            }

        wait_until(
            lambda: all(kinds.images(kind) == expected(kind) for kind in OBJECTS), timeout=60, what="every kind pinned"
        )
        for kind in OBJECTS:
            annotations = kinds.get(kind)["metadata"]["annotations"]
            assert annotations["geopin.io/pinned-region"] == "eastus", kind
            assert json.loads(annotations["geopin.io/original-images"]) == {
                "initContainers/migrate": f"{REGISTRY}/{kind.lower()}/migrate:1",
                "containers/app": f"{REGISTRY}/{kind.lower()}/app:2",
            }, kind

        # The Deployment's own ReplicaSets follow its template; geopin writes only the standalone one.
        owned = wait_until(
            lambda: kinds.api.sanitize_for_serialization(
                client.AppsV1Api(kinds.api).list_namespaced_replica_set(NAMESPACE, label_selector="app=deployment")
            )["items"],
            timeout=30,
            what="the controller manager made the Deployment's ReplicaSets",
        )
        written = {
            (event.get("objectRef") or {}).get("name")
            for event in control_plane.audit_events()
            if (event.get("user") or {}).get("username") == operator.user
            and (event.get("objectRef") or {}).get("resource") == "replicasets"
            and event.get("verb") == "patch"
        }
        assert written == {"replicaset"}, written
        assert not {rs["metadata"]["name"] for rs in owned} & written

        kinds.dynamic.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "kinds")

        def restored() -> bool:
            return all(
                json.dumps(kinds.get(kind)["spec"], sort_keys=True) == json.dumps(before[kind], sort_keys=True)
                for kind in OBJECTS
            )

        wait_until(restored, timeout=60, what="every spec byte-identical to before")
        for kind in OBJECTS:
            annotations = kinds.get(kind)["metadata"].get("annotations") or {}
            assert not {"geopin.io/original-images", "geopin.io/pinned-region"} & set(annotations), kind
    finally:
        operator.stop()
