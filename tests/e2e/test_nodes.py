"""The real nodes themselves: kubelets registered with the control plane, Pods that really pull from the
ACR-shaped replicas through AKS's credential provider lists, and a node stop that leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from kubernetes import client

from tests.harness import procs
from tests.harness.controlplane import REGION_LABEL
from tests.harness.nodecleanup import mounts_under, shim_pids
from tests.harness.nodeconfig import AKS_BEFORE_GEO, AKS_WITH_GEO
from tests.harness.nodeenv import container_state, host_network_pod, pod_namespace
from tests.harness.nodes import NODE_IMAGE_LABEL
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from kubernetes.client import ApiClient

    from tests.harness.nodeenv import NodeEnvironment
    from tests.harness.nodes import Node

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

SESSION_NODE = "aks-nodepool1-0"
PULL_TIMEOUT = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(node_kube: ApiClient) -> Iterator[str]:
    core: Any = client.CoreV1Api(node_kube)
    name = unique("nodes")
    pod_namespace(core, name)
    try:
        yield name
    finally:
        core.delete_namespace(name)


def wait_state(core: Any, namespace: str, pod: str, *states: str) -> str:
    found: str = wait_until(
        lambda: next((state for state in [container_state(core, namespace, pod)] if state in states), None),
        timeout=PULL_TIMEOUT,
        interval=0.2,
        what=f"pod {namespace}/{pod} in {states}",
    )
    return found


def pod_events(core: Any, namespace: str, pod: str, reason: str) -> list[str]:
    """The messages of the Events about `pod` with `reason`, oldest first."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [e.message for e in sorted(events, key=lambda e: e.metadata.creation_timestamp) if e.reason == reason]


def wait_event(core: Any, namespace: str, pod: str, reason: str, needle: str) -> str:
    found: str = wait_until(
        lambda: next((m for m in pod_events(core, namespace, pod, reason) if needle in m), None),
        timeout=PULL_TIMEOUT,
        interval=0.2,
        what=f"a {reason} Event of {namespace}/{pod} containing {needle!r}",
    )
    return found


def run_pod(core: Any, namespace: str, manifest: dict[str, Any]) -> str:
    core.create_namespaced_pod(namespace, manifest)
    name: str = manifest["metadata"]["name"]
    wait_state(core, namespace, name, "Running")
    return name


def delete_pod(core: Any, namespace: str, name: str) -> None:
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(gone, timeout=30.0, what=f"pod {namespace}/{name} deleted")


def http_answer(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0).text.strip()


# -- registration ---------------------------------------------------------------------------------


def test_node_is_a_real_ready_kubelet_with_aks_labels(node_env: NodeEnvironment, node_kube: ApiClient) -> None:
    core: Any = client.CoreV1Api(node_kube)
    node = core.read_node(SESSION_NODE)
    print(f"node Ready {node_env.nodes[SESSION_NODE].ready_seconds:.1f}s after its containerd started")
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.metadata.labels[REGION_LABEL] == "eastus"
    assert node.metadata.labels[NODE_IMAGE_LABEL] == AKS_WITH_GEO.node_image_version
    info = node.status.node_info
    assert info.kubelet_version == "v1.35.4"
    assert info.container_runtime_version.startswith("containerd://1.6")
    # Only real kubelets here: the node-less environment's fake Nodes are not created.
    names = [n.metadata.name for n in core.list_node().items]
    assert not [name for name in names if name.startswith("geopin-node-")]


# -- pulls ----------------------------------------------------------------------------------------


def test_pod_pulls_from_the_regional_host_through_its_data_endpoint_and_runs(
    node_env: NodeEnvironment, node_kube: ApiClient, namespace: str
) -> None:
    core: Any = client.CoreV1Api(node_kube)
    repo = f"nodes/{unique('web')}"
    node_env.push_pod_image(repo, "1", regions=["eastus"], label=repo)
    image = f"{node_env.acr['eastus'].host}/{repo}:1"
    port = procs.free_port()
    data_requests = len(node_env.acr.data["eastus"].requests())

    pod = run_pod(core, namespace, host_network_pod("web", image, node_name=SESSION_NODE, port=port, message=repo))

    pulled = wait_event(core, namespace, pod, "Pulled", f'"{image}"')
    assert pulled.startswith("Successfully pulled image")
    # The container is the image's program: it answers with the MESSAGE the Pod gave it, and logs.
    assert http_answer(port) == repo
    logged = node_env.nodes[SESSION_NODE].container_log(namespace, pod, "main")
    assert f"geopin-pod: serving on 127.0.0.1:{port}" in logged
    # containerd followed the replica's 307 to the data endpoint for the layers, without credentials.
    blob_gets = [r for r in node_env.acr.data["eastus"].requests()[data_requests:] if r.method == "GET"]
    assert blob_gets
    assert all(r.status == 200 and not r.authorization for r in blob_gets)


def test_deployment_pods_are_scheduled_onto_the_node(
    node_env: NodeEnvironment, node_kube: ApiClient, namespace: str
) -> None:
    repo = f"nodes/{unique('deploy')}"
    node_env.push_pod_image(repo, "1", regions=["eastus"])
    pod = host_network_pod("app", f"{node_env.acr['eastus'].host}/{repo}:1")
    template = {"metadata": {"labels": {"app": "app"}}, "spec": pod["spec"]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}}, "template": template},
    }
    apps: Any = client.AppsV1Api(node_kube)
    apps.create_namespaced_deployment(namespace, deployment)
    core: Any = client.CoreV1Api(node_kube)

    def running_pod() -> str | None:
        for pod in core.list_namespaced_pod(namespace, label_selector="app=app").items:
            if pod.spec.node_name and container_state(core, namespace, pod.metadata.name) == "Running":
                return str(pod.spec.node_name)
        return None

    assert (
        wait_until(running_pod, timeout=PULL_TIMEOUT, interval=0.2, what="the Deployment's Pod Running") == SESSION_NODE
    )


def test_credential_provider_lists_before_and_after_202607_29(
    node_env: NodeEnvironment, node_kube: ApiClient, namespace: str, extra_nodes: Callable[..., Node]
) -> None:
    core: Any = client.CoreV1Api(node_kube)
    repo = f"nodes/{unique('creds')}"
    node_env.push_pod_image(repo, "1")
    regional = f"{node_env.acr['eastus'].host}/{repo}:1"
    global_image = f"{node_env.acr.login_server}/{repo}:1"
    old = extra_nodes("aks-nodepool2-0", credential_provider=AKS_BEFORE_GEO)
    assert "*.*.geo.azurecr.io" not in old.credential_provider.match_images

    # The old list has no `*.*.geo.azurecr.io`: no credentials for the regional host, the real 401.
    core.create_namespaced_pod(namespace, host_network_pod("old-regional", regional, node_name=old.name))
    assert wait_state(core, namespace, "old-regional", "ErrImagePull", "ImagePullBackOff")
    failed = wait_event(core, namespace, "old-regional", "Failed", "401 Unauthorized")
    assert regional in failed
    # ... while `*.azurecr.io` covers the global endpoint on the same node.
    run_pod(core, namespace, host_network_pod("old-global", global_image, node_name=old.name))
    wait_event(core, namespace, "old-global", "Pulled", f'"{global_image}"')

    # The 202607.29 list covers the regional host: the same image pulls and runs.
    assert "*.*.geo.azurecr.io" in node_env.nodes[SESSION_NODE].credential_provider.match_images
    run_pod(core, namespace, host_network_pod("new-regional", regional, node_name=SESSION_NODE))
    assert wait_event(core, namespace, "new-regional", "Pulled", f'"{regional}"').startswith("Successfully pulled")


def test_removed_image_is_pulled_again(node_env: NodeEnvironment, node_kube: ApiClient, namespace: str) -> None:
    core: Any = client.CoreV1Api(node_kube)
    node = node_env.nodes[SESSION_NODE]
    repo = f"nodes/{unique('again')}"
    node_env.push_pod_image(repo, "1", regions=["eastus"])
    image = f"{node_env.acr['eastus'].host}/{repo}:1"

    first = run_pod(core, namespace, host_network_pod("first", image, node_name=node.name))
    assert wait_event(core, namespace, first, "Pulled", f'"{image}"').startswith("Successfully pulled")
    delete_pod(core, namespace, first)
    present = run_pod(core, namespace, host_network_pod("present", image, node_name=node.name))
    assert "already present on machine" in wait_event(core, namespace, present, "Pulled", f'"{image}"')
    delete_pod(core, namespace, present)

    removed = node.remove_image(image)
    assert image in removed
    assert not [name for name in node.images() if name.startswith(image.rsplit(":", 1)[0])]
    again = run_pod(core, namespace, host_network_pod("again", image, node_name=node.name))
    assert wait_event(core, namespace, again, "Pulled", f'"{image}"').startswith("Successfully pulled")


# -- teardown -------------------------------------------------------------------------------------


def findmnt_under(node_env: NodeEnvironment, directory: str) -> list[str]:
    """findmnt's mount points under `directory`, run where the node's mounts live (its name space)."""
    result = subprocess.run(
        node_env.acr.command(["findmnt", "--json", "--output", "TARGET"]),
        check=True,
        capture_output=True,
        text=True,
    )
    targets: list[str] = []
    pending = json.loads(result.stdout)["filesystems"]
    while pending:
        entry = pending.pop()
        targets.append(entry["target"])
        pending.extend(entry.get("children", []))
    return [t for t in targets if t == directory or t.startswith(directory + "/")]


def test_stopped_node_leaves_no_mount_and_no_process(
    node_env: NodeEnvironment, node_kube: ApiClient, namespace: str, extra_nodes: Callable[..., Node]
) -> None:
    core: Any = client.CoreV1Api(node_kube)
    node = extra_nodes("aks-nodepool3-0")
    repo = f"nodes/{unique('stop')}"
    node_env.push_pod_image(repo, "1", regions=["eastus"])
    port = procs.free_port()
    run_pod(
        core,
        namespace,
        host_network_pod("doomed", f"{node_env.acr['eastus'].host}/{repo}:1", node_name=node.name, port=port),
    )
    root = str(node.paths.root)
    # While it runs: the kubelet's volumes and bind of its root dir, the sandbox's shm, the rootfs.
    assert len(findmnt_under(node_env, root)) >= 3
    shims = shim_pids(node.paths.socket)
    assert shims
    assert http_answer(port) == ""

    node.stop()

    assert findmnt_under(node_env, root) == []
    assert mounts_under(node.paths.root) == []  # nothing leaked outside the name space either
    assert shim_pids(node.paths.socket) == []
    assert not [pid for pid in shims if procs.pid_alive(pid)]
    assert not [p.name for p in node.processes if p.alive()]
    with pytest.raises(httpx.ConnectError):
        http_answer(port)  # the container's process is gone with its shim
