"""Admission mode through a MutatingAdmissionPolicy, on real API servers that serve it.

This module runs twice, each time on a control plane of its own: Kubernetes 1.35 with
MutatingAdmissionPolicy enabled (admissionregistration.k8s.io/v1beta1, off by default there), and
Kubernetes 1.36, where it is GA (admissionregistration.k8s.io/v1, on by default). No geopin process
runs at any point: the API server evaluates the policy's CEL itself, reading the current pin from the
params ConfigMap, so a failover is one ConfigMap write. kube-controller-manager creates the
Deployments' Pods, exactly as in a cluster (1.35's, against 1.36's API server: a supported skew).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from kubernetes import client

from geopin.core.health import Target
from geopin.core.mutating_policy import (
    BINDING_RESOURCE,
    POLICY_RESOURCE,
    Redirect,
    params_configmap,
    policy_objects,
    redirect_objects,
    redirect_params,
    served,
)
from geopin.core.policy import GLOBAL_REGION, Policy, from_spec
from tests.harness.controlplane import ADMIN_USER, ControlPlane
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import MapApiServer
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

OPERATOR_NAMESPACE = "geopin-system"
NAMESPACE = "map-apps"
LABELLED = "map-labelled"
REGISTRY = "contoso.azurecr.io"
EAST = Target("eastus", "127.0.0.1:15001")
WEST = Target("westus", "127.0.0.1:15002")
FABRIKAM = "fabrikam.azurecr.io"
FABRIKAM_EAST = Target("eastus", "127.0.0.1:16001")
ORIGINAL = "geopin.io/original-images"
PINNED = "geopin.io/pinned-region"
UNTOUCHED = (
    "nginx:1.27",
    "contoso.azurecr.io.evil.com/x:1",
    "xcontoso.azurecr.io/x:1",
    "contoso.azurecr.io:5000/x:1",
)
WAIT = 60.0


def policy_of(name: str, registry: str, target: Target, **spec: Any) -> Policy:
    return from_spec(
        name,
        {
            "registry": registry,
            "region": "eastus",
            "mode": "Admission",
            "replicas": [{"region": target.region, "endpoint": target.endpoint}],
            **spec,
        },
    )


CONTOSO = policy_of("contoso", REGISTRY, EAST)
FABRIKAM_POLICY = policy_of(
    "fabrikam", FABRIKAM, FABRIKAM_EAST, namespaceSelector={"matchLabels": {"geopin.io/enabled": "true"}}
)


class Env:
    def __init__(self, cp: ControlPlane, api_version: str) -> None:
        self.cp = cp
        self.api_version = api_version
        self.api: Any = cp.api_client()
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.http = httpx.Client(base_url=cp.url, verify=cp.ca.ssl_context(cp.admin), timeout=10.0)
        self.count = 0

    def close(self) -> None:
        self.http.close()
        self.api.close()

    # -- raw API access (no typed client for v1beta1 MAPs is needed) --------------------------------------

    def get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def apply(self, obj: dict[str, Any]) -> None:
        """Create or replace one of policy_objects()' objects."""
        if obj["kind"] == "ConfigMap":
            collection = f"/api/v1/namespaces/{obj['metadata']['namespace']}/configmaps"
        else:
            plural = POLICY_RESOURCE if obj["kind"] == "MutatingAdmissionPolicy" else BINDING_RESOURCE
            collection = f"/apis/{self.api_version}/{plural}"
        response = self.http.post(collection, json=obj)
        if response.status_code == 409:
            current = self.get(f"{collection}/{obj['metadata']['name']}")
            replaced = {
                **obj,
                "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            response = self.http.put(f"{collection}/{obj['metadata']['name']}", json=replaced)
        assert response.status_code in (200, 201), response.text

    def write_params(self, target: Target) -> None:
        """The failover: ONE unconditional PUT of the params ConfigMap, nothing else."""
        params = params_configmap(CONTOSO, target, OPERATOR_NAMESPACE)
        path = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/{params['metadata']['name']}"
        response = self.http.put(path, json=params)
        assert response.status_code == 200, response.text

    # -- Pods -----------------------------------------------------------------------------------------

    def create_pod(
        self,
        namespace: str,
        containers: dict[str, str],
        init_containers: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Any:
        """A standalone Pod (admitted like any other); retried until the namespace's ServiceAccount exists."""
        self.count += 1
        body: dict[str, Any] = {
            "metadata": {"name": f"probe-{self.count}", "annotations": annotations or {}},
            "spec": {"containers": [{"name": n, "image": i} for n, i in containers.items()]},
        }
        if init_containers:
            body["spec"]["initContainers"] = [{"name": n, "image": i} for n, i in init_containers.items()]
        return wait_until(
            functools.partial(self.core.create_namespaced_pod, namespace, body),
            timeout=WAIT,
            what=f"creating a Pod in {namespace}",
            ignore=(client.ApiException,),
        )

    def deployment_pod(
        self,
        name: str,
        containers: dict[str, str],
        init_containers: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        namespace: str = NAMESPACE,
    ) -> Any:
        """Create a Deployment and return the Pod kube-controller-manager makes for it."""
        pod_spec: dict[str, Any] = {"containers": [{"name": n, "image": i} for n, i in containers.items()]}
        if init_containers:
            pod_spec["initContainers"] = [{"name": n, "image": i} for n, i in init_containers.items()]
        self.apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                        "spec": pod_spec,
                    },
                },
            },
        )
        pods = wait_until(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=f"app={name}").items,
            timeout=WAIT,
            what=f"the Pod of Deployment {namespace}/{name}",
        )
        return pods[0]


def images(pod: Any) -> dict[str, str]:
    found = {f"containers/{c.name}": c.image for c in pod.spec.containers}
    found.update({f"initContainers/{c.name}": c.image for c in pod.spec.init_containers or []})
    return found


def annotations_of(pod: Any) -> dict[str, str]:
    return dict(pod.metadata.annotations or {})


@pytest.fixture(scope="module")
def env(ca: CA, map_api_server: MapApiServer) -> Iterator[Env]:
    server = map_api_server
    with ControlPlane(ca=ca, binaries=server.binaries, extra_apiserver_args=server.apiserver_args) as cp:
        env = Env(cp, server.api_version)
        try:
            for namespace, labels in (
                (OPERATOR_NAMESPACE, {}),
                (NAMESPACE, {}),
                (LABELLED, {"geopin.io/enabled": "true"}),
            ):
                env.core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
            for obj in policy_objects(CONTOSO, EAST, OPERATOR_NAMESPACE, api_version=env.api_version):
                env.apply(obj)
            # The API server picks policies, bindings and params up through informers: wait until it does.
            wait_until(
                lambda: (
                    env.create_pod(NAMESPACE, {"app": f"{REGISTRY}/warm/up:1"}).spec.containers[0].image
                    == f"{EAST.endpoint}/warm/up:1"
                ),
                timeout=WAIT,
                what="the MutatingAdmissionPolicy to take effect",
            )
            yield env
        finally:
            env.close()


def test_served_on_this_api_server(env: Env) -> None:
    assert served(env.get(f"/apis/{env.api_version}"), env.api_version)
    other = (
        "admissionregistration.k8s.io/v1beta1" if env.api_version.endswith("/v1") else "admissionregistration.k8s.io/v1"
    )
    assert env.http.get(f"/apis/{other}").status_code == 404 or not served(env.get(f"/apis/{other}"), other)
    version = env.get("/version")
    assert (version["major"], version["minor"]) == (("1", "36") if env.api_version.endswith("/v1") else ("1", "35"))


def test_objects_apply_as_written(env: Env) -> None:
    policy_object, binding, params = policy_objects(CONTOSO, EAST, OPERATOR_NAMESPACE, api_version=env.api_version)
    stored_policy = env.get(f"/apis/{env.api_version}/{POLICY_RESOURCE}/{policy_object['metadata']['name']}")
    assert stored_policy["spec"]["failurePolicy"] == "Ignore"
    assert stored_policy["spec"]["reinvocationPolicy"] == "Never"
    assert stored_policy["spec"]["mutations"] == policy_object["spec"]["mutations"]
    stored_binding = env.get(f"/apis/{env.api_version}/{BINDING_RESOURCE}/{binding['metadata']['name']}")
    assert stored_binding["spec"]["paramRef"] == binding["spec"]["paramRef"]
    assert (
        stored_binding["spec"]["matchResources"]["namespaceSelector"]
        == binding["spec"]["matchResources"]["namespaceSelector"]
    )
    stored_params = env.core.read_namespaced_config_map(params["metadata"]["name"], OPERATOR_NAMESPACE)
    assert stored_params.data == params["data"]


def test_deployment_pods_are_pinned_with_both_annotations(env: Env) -> None:
    containers = {"web": f"{REGISTRY}/shop/web:1"} | {f"other{i}": image for i, image in enumerate(UNTOUCHED)}
    init_containers = {"init": f"{REGISTRY}/shop/init@sha256:{'a' * 64}", "hub": "busybox:1.36"}
    pod = env.deployment_pod("web", containers, init_containers)

    assert images(pod) == {
        "containers/web": f"{EAST.endpoint}/shop/web:1",
        **{f"containers/other{i}": image for i, image in enumerate(UNTOUCHED)},
        "initContainers/init": f"{EAST.endpoint}/shop/init@sha256:{'a' * 64}",
        "initContainers/hub": "busybox:1.36",
    }
    assert [c.name for c in pod.spec.containers] == list(containers)  # order kept
    assert annotations_of(pod)[PINNED] == "eastus"
    assert json.loads(annotations_of(pod)[ORIGINAL]) == {
        "containers/web": f"{REGISTRY}/shop/web:1",
        "initContainers/init": init_containers["init"],
    }
    # The Deployment's template is not touched (Pod CREATE only).
    template = env.apps.read_namespaced_deployment("web", NAMESPACE).spec.template.spec
    assert template.containers[0].image == f"{REGISTRY}/shop/web:1"


def test_host_matches_case_insensitively_and_only_the_host_changes(env: Env) -> None:
    pod = env.create_pod(NAMESPACE, {"web": "Contoso.AzureCR.io/shop/web:1.2.3-rc_1"})
    assert images(pod) == {"containers/web": f"{EAST.endpoint}/shop/web:1.2.3-rc_1"}
    assert json.loads(annotations_of(pod)[ORIGINAL]) == {"containers/web": "Contoso.AzureCR.io/shop/web:1.2.3-rc_1"}


def test_pod_without_a_registry_image_gets_nothing(env: Env) -> None:
    pod = env.deployment_pod("foreign", {f"c{i}": image for i, image in enumerate(UNTOUCHED)})
    assert images(pod) == {f"containers/c{i}": image for i, image in enumerate(UNTOUCHED)}
    assert ORIGINAL not in annotations_of(pod)
    assert PINNED not in annotations_of(pod)


def test_skip_annotation_leaves_the_pod_alone(env: Env) -> None:
    pod = env.deployment_pod("skipped", {"web": f"{REGISTRY}/shop/web:1"}, annotations={"geopin.io/skip": "true"})
    assert images(pod) == {"containers/web": f"{REGISTRY}/shop/web:1"}
    assert annotations_of(pod) == {"geopin.io/skip": "true"}


def test_system_and_operator_namespaces_are_untouched(env: Env) -> None:
    for namespace in ("kube-system", OPERATOR_NAMESPACE):
        pod = env.create_pod(namespace, {"web": f"{REGISTRY}/shop/web:1"})
        assert images(pod) == {"containers/web": f"{REGISTRY}/shop/web:1"}, namespace
        assert ORIGINAL not in annotations_of(pod)


def test_second_policy_with_a_namespace_selector(env: Env) -> None:
    for obj in policy_objects(FABRIKAM_POLICY, FABRIKAM_EAST, OPERATOR_NAMESPACE, api_version=env.api_version):
        env.apply(obj)
    both = {"a": f"{REGISTRY}/shop/a:1", "b": f"{FABRIKAM}/shop/b:1"}
    pod = wait_until(
        lambda: (p := env.create_pod(LABELLED, both)).spec.containers[1].image != both["b"] and p,
        timeout=WAIT,
        what="the fabrikam policy to take effect",
    )
    assert images(pod) == {
        "containers/a": f"{EAST.endpoint}/shop/a:1",
        "containers/b": f"{FABRIKAM_EAST.endpoint}/shop/b:1",
    }
    # Each binding adds its own entries to the one record.
    assert json.loads(annotations_of(pod)[ORIGINAL]) == {"containers/a": both["a"], "containers/b": both["b"]}
    assert annotations_of(pod)[PINNED] == "eastus"

    # An unlabelled namespace is outside fabrikam's namespaceSelector; contoso (no selector) still applies.
    outside = env.create_pod(NAMESPACE, both)
    assert images(outside) == {"containers/a": f"{EAST.endpoint}/shop/a:1", "containers/b": both["b"]}
    assert json.loads(annotations_of(outside)[ORIGINAL]) == {"containers/a": both["a"]}


def test_failover_is_one_configmap_write_with_no_operator_running(env: Env) -> None:
    def pinned_to(target: Target) -> Any:
        pod = env.create_pod(NAMESPACE, {"web": f"{REGISTRY}/shop/web:1"})
        return pod if pod.spec.containers[0].image == f"{target.endpoint}/shop/web:1" else None

    since = env.cp.audit_line_count()
    try:
        env.write_params(WEST)
        assert env.cp.audit_writes(since, user=ADMIN_USER) == 1
        assert env.cp.audit_writes(since, resource="configmaps", namespace=OPERATOR_NAMESPACE) == 1

        # The API server's params informer sees the write within moments; from then on every Pod follows it.
        probe = wait_until(lambda: pinned_to(WEST), timeout=WAIT, what="a Pod pinned to westus")
        assert annotations_of(probe)[PINNED] == "westus"
        pod = env.deployment_pod("after-failover", {"web": f"{REGISTRY}/shop/web:2"})
        assert images(pod) == {"containers/web": f"{WEST.endpoint}/shop/web:2"}
        assert annotations_of(pod)[PINNED] == "westus"
        assert json.loads(annotations_of(pod)[ORIGINAL]) == {"containers/web": f"{REGISTRY}/shop/web:2"}

        # Global (no healthy replica): the same one write, and Pods are then admitted untouched.
        env.write_params(Target(GLOBAL_REGION, REGISTRY))
        untouched = wait_until(
            lambda: (
                (p := env.create_pod(NAMESPACE, {"web": f"{REGISTRY}/shop/web:1"})).metadata.annotations is None and p
            ),
            timeout=WAIT,
            what="a Pod left alone under the global pin",
        )
        assert images(untouched) == {"containers/web": f"{REGISTRY}/shop/web:1"}
    finally:
        env.write_params(EAST)
        wait_until(lambda: pinned_to(EAST), timeout=WAIT, what="Pods pinned to eastus again")


# Patch mode with failover.strategy: Redirect: templates keep their eastus pin during an outage, and the
# API server moves their new Pods. Its own policy name and registry, so the Admission policy above
# (on contoso.azurecr.io) never sees these Pods.
PATCHED_EAST, PATCHED_WEST = "127.0.0.1:17001", "127.0.0.1:17002"
PATCHED = from_spec(
    "patched",
    {
        "registry": "patched.azurecr.io",
        "replicas": [{"region": "eastus", "endpoint": PATCHED_EAST}, {"region": "westus", "endpoint": PATCHED_WEST}],
    },
)


def test_redirect_moves_new_pods_off_an_unusable_host_with_one_configmap_write(env: Env) -> None:
    nothing_held = Redirect((), Target("eastus", PATCHED_EAST))
    for obj in redirect_objects(PATCHED, nothing_held, OPERATOR_NAMESPACE, api_version=env.api_version):
        env.apply(obj)
    on_east = {"web": f"{PATCHED_EAST}/shop/web:1"}
    # Nothing unusable: a Pod of a template pinned to eastus is left alone (once the policy is loaded,
    # which the first redirect below proves; this one only shows nothing else happens meanwhile).
    assert images(env.create_pod(NAMESPACE, on_east)) == {"containers/web": f"{PATCHED_EAST}/shop/web:1"}

    def write(redirect: Redirect) -> None:
        params = redirect_params(PATCHED, redirect, OPERATOR_NAMESPACE)
        response = env.http.put(
            f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/{params['metadata']['name']}", json=params
        )
        assert response.status_code == 200, response.text

    since = env.cp.audit_line_count()
    write(Redirect((PATCHED_EAST,), Target("westus", PATCHED_WEST)))
    assert env.cp.audit_writes(since, user=ADMIN_USER) == 1  # the switch: one ConfigMap write
    try:
        moved = wait_until(
            lambda: (p := env.create_pod(NAMESPACE, on_east)).spec.containers[0].image.startswith(PATCHED_WEST) and p,
            timeout=WAIT,
            what="a new Pod redirected to westus",
        )
        assert images(moved) == {"containers/web": f"{PATCHED_WEST}/shop/web:1"}
        assert annotations_of(moved)[PINNED] == "westus"
        assert json.loads(annotations_of(moved)[ORIGINAL]) == {"containers/web": "patched.azurecr.io/shop/web:1"}

        # A Deployment's Pod (kube-controller-manager's), init containers too; only the host changes.
        pod = env.deployment_pod(
            "held-template",
            {"web": f"{PATCHED_EAST}/shop/web:2", "side": "nginx:1.27"},
            init_containers={"migrate": f"{PATCHED_EAST.upper()}/shop/migrate@sha256:{'a' * 64}"},
        )
        assert images(pod) == {
            "containers/web": f"{PATCHED_WEST}/shop/web:2",
            "containers/side": "nginx:1.27",
            "initContainers/migrate": f"{PATCHED_WEST}/shop/migrate@sha256:{'a' * 64}",
        }
        assert json.loads(annotations_of(pod)[ORIGINAL]) == {
            "containers/web": "patched.azurecr.io/shop/web:2",
            "initContainers/migrate": f"patched.azurecr.io/shop/migrate@sha256:{'a' * 64}",
        }
        # Left alone: a healthy replica's host, another registry, an opted-out Pod.
        for untouched in ({"web": f"{PATCHED_WEST}/shop/web:1"}, {"web": "nginx:1.27"}):
            assert images(env.create_pod(NAMESPACE, untouched)) == {f"containers/{k}": v for k, v in untouched.items()}
        skipped = env.create_pod(NAMESPACE, on_east, annotations={"geopin.io/skip": "true"})
        assert images(skipped) == {"containers/web": f"{PATCHED_EAST}/shop/web:1"}
    finally:
        write(nothing_held)  # failback: the same one write
    wait_until(
        lambda: env.create_pod(NAMESPACE, on_east).spec.containers[0].image.startswith(PATCHED_EAST),
        timeout=WAIT,
        what="new Pods on eastus again once nothing is unusable",
    )
