"""Patch mode on the real control plane: pin, opt out, restart without writes, restore on deletion.

The expected images are written out by hand below, not computed with geopin's own functions, so a
bug in the core cannot make its own test pass.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "contoso.azurecr.io"
DIGEST = "sha256:" + "ab" * 32
POLICY = "contoso"
ORIGINAL = "geopin.io/original-images"
PINNED = "geopin.io/pinned-region"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"

# name → (namespace, {container key: image}, annotations). Init containers are keyed "initContainers/…".
WORKLOADS: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "web": ("shop", {"containers/web": f"{REGISTRY}/shop/web:1.4.2"}, {}),
    "web-digest": ("shop", {"containers/web": f"{REGISTRY}/shop/web@{DIGEST}"}, {}),
    "web-tag-digest": ("shop", {"containers/web": f"{REGISTRY}/shop/web:1.4.2@{DIGEST}"}, {}),
    "with-init": (
        "shop",
        {
            "initContainers/migrate": f"{REGISTRY}/shop/migrate:2",
            "initContainers/wait": "busybox:1.36",
            "containers/app": f"{REGISTRY}/shop/app:3",
            "containers/sidecar": "mcr.microsoft.com/oss/envoyproxy/envoy:v1.31.0",
        },
        {},
    ),
    "upper-host": ("shop", {"containers/app": "Contoso.AzureCR.io/shop/app:3"}, {}),
    "docker-hub": ("shop", {"containers/nginx": "nginx:1.27", "containers/lib": "library/redis"}, {}),
    "other-registry": ("billing", {"containers/app": "fabrikam.azurecr.io/billing/app:9"}, {}),
    "evil-suffix": ("billing", {"containers/app": f"{REGISTRY}.evil.com/billing/app:1"}, {}),
    "evil-prefix": ("billing", {"containers/app": f"x{REGISTRY}/billing/app:1"}, {}),
    "other-port": ("billing", {"containers/app": f"{REGISTRY}:5000/billing/app:1"}, {}),
    "user-pin": ("billing", {"containers/app": "contoso.westus.geo.azurecr.io/billing/app:1"}, {}),
    "invalid": ("billing", {"containers/app": f"{REGISTRY}/Billing/App:1"}, {}),
    "skipped": ("billing", {"containers/app": f"{REGISTRY}/billing/app:1"}, {"geopin.io/skip": "true"}),
    "mixed": (
        "ops",
        {
            "containers/a": f"{REGISTRY}/ops/a:1",
            "containers/b": "quay.io/prometheus/node-exporter:v1.8.0",
        },
        {},
    ),
    "no-annotations-yet": ("ops", {"containers/x": f"{REGISTRY}/ops/x:latest"}, {}),
    "deep-path": ("ops", {"containers/x": f"{REGISTRY}/a/b/c/d:1.0-rc.1"}, {}),
    "localhost": ("ops", {"containers/x": "localhost:5000/ops/x:1"}, {}),
    "ipv4-registry": ("ops", {"containers/x": "10.0.0.1:5000/ops/x:1"}, {}),
    "many": ("ops", {f"containers/c{i}": f"{REGISTRY}/ops/c{i}:{i}" for i in range(4)}, {}),
    "system": ("kube-system", {"containers/x": f"{REGISTRY}/kube/x:1"}, {}),
}
# The ones geopin must rewrite, and how (host only; everything after the host is byte-identical).
EXPECTED_PINNED = {
    "web": {"containers/web": "{east}/shop/web:1.4.2"},
    "web-digest": {"containers/web": "{east}/shop/web@" + DIGEST},
    "web-tag-digest": {"containers/web": "{east}/shop/web:1.4.2@" + DIGEST},
    "with-init": {"initContainers/migrate": "{east}/shop/migrate:2", "containers/app": "{east}/shop/app:3"},
    "upper-host": {"containers/app": "{east}/shop/app:3"},
    "mixed": {"containers/a": "{east}/ops/a:1"},
    "no-annotations-yet": {"containers/x": "{east}/ops/x:latest"},
    "deep-path": {"containers/x": "{east}/a/b/c/d:1.0-rc.1"},
    "many": {f"containers/c{i}": "{east}/ops/c" + f"{i}:{i}" for i in range(4)},
}
NAMESPACES = sorted({ns for ns, _, _ in WORKLOADS.values()} - {"kube-system"})


def deployment(name: str, namespace: str, images: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    def containers(kind: str) -> list[dict[str, str]]:
        return [{"name": key.split("/")[1], "image": image} for key, image in images.items() if key.startswith(kind)]

    pod_spec: dict[str, Any] = {"containers": containers("containers/")}
    if init := containers("initContainers/"):
        pod_spec["initContainers"] = init
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": name}}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def images_of(body: dict[str, Any]) -> dict[str, str]:
    pod = body["spec"]["template"]["spec"]
    return {f"{kind}/{c['name']}": c["image"] for kind in ("initContainers", "containers") for c in pod.get(kind) or []}


def policy_body(endpoints: dict[str, str], ca_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "registry": REGISTRY,
            "replicas": [{"region": region, "endpoint": endpoint} for region, endpoint in endpoints.items()],
            "probe": {"caBundle": ca_pem},
            # These images are never pushed: this test is about rewriting (test_replication.py covers the check).
            "replicationCheck": False,
        },
    }


class Cluster:
    def __init__(self, control_plane: ControlPlane) -> None:
        self.cp = control_plane
        # Typed as Any: these tests pass plain dicts, which the client accepts as bodies.
        self.api: Any = control_plane.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    def get(self, name: str) -> dict[str, Any]:
        namespace = WORKLOADS[name][0]
        body: dict[str, Any] = self.api.sanitize_for_serialization(
            self.apps.read_namespaced_deployment(name, namespace)
        )
        return body

    def policy(self) -> dict[str, Any] | None:
        return self.policy_named(POLICY)

    def policy_named(self, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return body

    def events(self, namespace: str, name: str, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return [e for e in items if e.reason == reason]


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    install_crd(control_plane)
    cluster = Cluster(control_plane)
    for namespace in NAMESPACES:
        cluster.core.create_namespace({"metadata": {"name": namespace}})
    for name, (namespace, images, extra) in WORKLOADS.items():
        cluster.apps.create_namespaced_deployment(namespace, deployment(name, namespace, images, extra))
    yield cluster
    for namespace in NAMESPACES:
        cluster.core.delete_namespace(namespace)
    cluster.apps.delete_namespaced_deployment("system", "kube-system")
    cluster.api.close()


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    workdir: Path = tmp_path_factory.mktemp("operator")
    with Operator(control_plane, workdir, verbose=True) as op:
        yield op
        # A test that failed half-way leaves its policy: delete it while the operator still runs its
        # finalizer, or a later file's policy for the same registry would meet a conflict.
        for name in (POLICY, "corp"):
            if cluster.policy_named(name) is not None:
                cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        wait_until(
            lambda: all(cluster.policy_named(name) is None for name in (POLICY, "corp")),
            timeout=60,
            what="this file's policies gone",
        )
    print(op.log()[-5000:])


def test_patch_mode_lifecycle(cluster: Cluster, operator: Operator, registries: Any, ca: CA) -> None:
    endpoints = {region: registries[region].endpoint for region in ("eastus", "westus", "centralus")}
    east = endpoints["eastus"]
    before = {name: cluster.get(name) for name in WORKLOADS}
    writes_before_policy = cluster.cp.audit_line_count()

    cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, policy_body(endpoints, ca.cert_pem.decode()))

    # 1. Exactly the right images are rewritten, with the original recorded.
    expected = {name: {k: v.format(east=east) for k, v in images.items()} for name, images in EXPECTED_PINNED.items()}

    def all_pinned() -> bool:
        return all({**WORKLOADS[n][1], **expected[n]} == images_of(cluster.get(n)) for n in expected)

    wait_until(all_pinned, timeout=60, what="every expected Deployment pinned to eastus")
    for name, images in expected.items():
        body = cluster.get(name)
        annotations = body["metadata"]["annotations"]
        assert annotations[PINNED] == "eastus", name
        assert json.loads(annotations[ORIGINAL]) == {k: WORKLOADS[name][1][k] for k in images}, name
        assert images_of(body) == {**WORKLOADS[name][1], **images}, name
    untouched = [name for name in WORKLOADS if name not in expected]
    for name in untouched:
        body = cluster.get(name)
        assert images_of(body) == WORKLOADS[name][1], name
        assert not {ORIGINAL, PINNED} & set(body["metadata"].get("annotations") or {}), name
        # Not a single write from geopin to a workload it does not rewrite.
        assert _writes_to(cluster, writes_before_policy, operator.user, name) == 0, name

    # 2. Status, Events and metrics say what happened.
    def status_settled() -> dict[str, Any] | None:
        status = (cluster.policy() or {}).get("status") or {}
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return status if ready and ready[0]["status"] == "True" else None

    def status_counts_every_pin() -> dict[str, Any] | None:
        # The status is level-based: a pass that ran while the workers were still writing counted fewer
        # pins (and may already say Ready: a short repoint does not flip it); the pass after the writes
        # counts them all.
        status = status_settled()
        return status if status and status["workloads"]["pinned"] == len(expected) else None

    status: dict[str, Any] = wait_until(status_counts_every_pin, timeout=30, what="policy Ready, every pin counted")
    assert status["clusterRegion"] == "eastus"
    assert status["activeRegion"] == "eastus"
    assert status["activeEndpoint"] == east
    assert status["workloads"]["skipped"] == 2  # the opted-out one and the one in kube-system
    assert status["workloads"]["invalid"] == 1
    # Workload Events are posted once the workers are idle.
    wait_until(lambda: cluster.events("shop", "web", "Repinned"), timeout=15, what="Repinned Event")
    wait_until(lambda: cluster.events("billing", "invalid", "InvalidImageReference"), timeout=15,
               what="InvalidImageReference Event")  # fmt: skip
    assert operator.metric("geopin_pinned_workloads", policy=POLICY, region="eastus") == len(expected)
    assert operator.metric("geopin_active_region_info", policy=POLICY, region="eastus", endpoint=east) == 1
    assert operator.alive()

    # 3. Opt-out: the workload gets its original images back exactly, and geopin's annotations go.
    cluster.apps.patch_namespaced_deployment("web", "shop", {"metadata": {"annotations": {"geopin.io/skip": "true"}}})
    wait_until(lambda: images_of(cluster.get("web")) == WORKLOADS["web"][1], timeout=30, what="web restored on opt-out")
    assert not {ORIGINAL, PINNED} & set(cluster.get("web")["metadata"]["annotations"])
    cluster.apps.patch_namespaced_deployment("web", "shop", {"metadata": {"annotations": {"geopin.io/skip": None}}})
    wait_until(lambda: images_of(cluster.get("web")) == expected["web"], timeout=30, what="web pinned again")

    # 4. A restart resyncs every workload and writes nothing at all.
    wait_until(status_settled, timeout=30, what="policy Ready before restart")
    operator.stop()
    mark = cluster.cp.audit_line_count()
    operator.start()
    resynced = "usable replicas ['centralus', 'eastus', 'westus']: 0 workloads queued"
    wait_until(lambda: resynced in operator.log().split("geopin started")[-1],
               timeout=30, what="operator resynced after restart")  # fmt: skip
    wait_until(lambda: operator.metric("geopin_pinned_workloads", policy=POLICY, region="eastus") == len(expected),
               timeout=30, what="status pass after restart")  # fmt: skip
    assert cluster.cp.audit_writes(mark, user=operator.user) == 0, _audit_dump(cluster, mark, operator.user)

    # 5. Deleting the policy restores every Deployment's spec byte-for-byte.
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
    wait_until(lambda: cluster.policy() is None, timeout=60, what="policy finalizer released")
    for name in WORKLOADS:
        after = cluster.get(name)
        assert _canonical(after["spec"]) == _canonical(before[name]["spec"]), name
        assert _own_annotations(after) == _own_annotations(before[name]), name


def _writes_to(cluster: Cluster, since: int, user: str, name: str) -> int:
    return sum(
        1
        for event in cluster.cp.audit_events(since)
        if (event.get("objectRef") or {}).get("name") == name
        and (event.get("user") or {}).get("username") == user
        and event.get("verb") in ("create", "update", "patch", "delete")
        and (event.get("objectRef") or {}).get("resource") == "deployments"
    )


def _audit_dump(cluster: Cluster, since: int, user: str) -> str:
    events = [e for e in cluster.cp.audit_events(since) if (e.get("user") or {}).get("username") == user]
    return "\n".join(f"{e.get('verb')} {e.get('requestURI')}" for e in events)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _own_annotations(body: dict[str, Any]) -> dict[str, str]:
    annotations = copy.deepcopy(body["metadata"].get("annotations") or {})
    annotations.pop("deployment.kubernetes.io/revision", None)
    return annotations


CORP_REGISTRY = "registry.contoso.com"  # not an ACR: every replica has an explicit endpoint
CORP_NAMESPACE = "endpoints"


def test_explicit_endpoint_changed_then_replica_removed_then_policy_deleted(
    cluster: Cluster, operator: Operator, registries: Any, ca: CA
) -> None:
    """The workload follows its explicit endpoint through two policy edits, and deletion restores it exactly."""
    east, west = registries["eastus"].port, registries["westus"].port
    images = {"containers/web": f"{CORP_REGISTRY}/shop/web:1.4.2", "containers/proxy": "nginx:1.27"}
    cluster.core.create_namespace({"metadata": {"name": CORP_NAMESPACE}})
    cluster.apps.create_namespaced_deployment(
        CORP_NAMESPACE, deployment("corp", CORP_NAMESPACE, images, {"team": "shop"})
    )
    before: dict[str, Any] = cluster.api.sanitize_for_serialization(
        cluster.apps.read_namespaced_deployment("corp", CORP_NAMESPACE)
    )

    def corp() -> dict[str, Any]:
        body: dict[str, Any] = cluster.api.sanitize_for_serialization(
            cluster.apps.read_namespaced_deployment("corp", CORP_NAMESPACE)
        )
        return body

    def spec(replicas: dict[str, str]) -> dict[str, Any]:
        return {
            "registry": CORP_REGISTRY,
            "replicas": [{"region": region, "endpoint": endpoint} for region, endpoint in replicas.items()],
            "probe": {"caBundle": ca.cert_pem.decode()},
            "replicationCheck": False,
        }

    def pinned_to(host: str) -> bool:
        return images_of(corp())["containers/web"] == f"{host}/shop/web:1.4.2"

    policy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryPolicy", "metadata": {"name": "corp"}}
    policy["spec"] = spec({"eastus": f"127.0.0.1:{east}", "westus": f"127.0.0.1:{west}"})
    cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
    wait_until(lambda: pinned_to(f"127.0.0.1:{east}"), timeout=60, what="corp pinned to eastus")

    # 1. eastus's explicit endpoint changes (same replica, another name): the workload follows it.
    changed = spec({"eastus": f"localhost:{east}", "westus": f"127.0.0.1:{west}"})
    cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "corp", {"spec": changed})
    wait_until(lambda: pinned_to(f"localhost:{east}"), timeout=60, what="corp repointed to eastus's new endpoint")
    assert json.loads(corp()["metadata"]["annotations"][ORIGINAL]) == {"containers/web": images["containers/web"]}

    # 2. eastus leaves the policy: the workload moves to westus, its original still recorded.
    shrunk = spec({"westus": f"127.0.0.1:{west}"})
    cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "corp", {"spec": shrunk})
    wait_until(lambda: pinned_to(f"127.0.0.1:{west}"), timeout=60, what="corp moved to westus")
    assert json.loads(corp()["metadata"]["annotations"][ORIGINAL]) == {"containers/web": images["containers/web"]}
    assert corp()["metadata"]["annotations"][PINNED] == "westus"

    # 3. Deleting the policy restores the Deployment's spec and annotations byte for byte.
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "corp")
    wait_until(lambda: cluster.policy_named("corp") is None, timeout=60, what="corp policy finalizer released")
    after = corp()
    assert _canonical(after["spec"]) == _canonical(before["spec"])
    assert _own_annotations(after) == _own_annotations(before)
    cluster.core.delete_namespace(CORP_NAMESPACE)
