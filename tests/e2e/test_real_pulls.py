"""geopin on real nodes: Pods that really pull from the replica geopin chose, with AKS's names.

The policy is written exactly as on AKS (`registry: contoso.azurecr.io`, replicas by region, no
endpoint, no caBundle); geopin runs inside the environment's name space, as `.dev/run` runs it. The
kubelet's own `Pulled` and `Failed` Events are the evidence: nothing here posts an Event for it.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.nodeconfig import AKS_BEFORE_GEO
from tests.harness.nodeenv import (
    container_state,
    host_network_deployment,
    host_network_pod,
    pod_namespace,
    registry_pull_secret,
)
from tests.harness.policies import PolicyClient
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.harness.acr import AcrRegistrySet
    from tests.harness.nodeenv import NodeEnvironment
    from tests.harness.nodes import Node

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

POLICY = "contoso"
REPO, TAG = "shop/web", "1"
PULL_TIMEOUT = 90.0
SESSION_NODE = "aks-nodepool1-0"


class Cluster:
    """The node environment's API, the operator, and helpers that read what the kubelet reported."""

    def __init__(self, env: NodeEnvironment, api: Any, operator: Operator) -> None:
        self.env = env
        self.acr: AcrRegistrySet = env.acr
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.policy = PolicyClient(api, POLICY)
        self.operator = operator

    # -- the policy ------------------------------------------------------------------------------

    def create_policy(self, namespace: str, **spec: Any) -> None:
        self.policy.create({
            "registry": self.acr.login_server,
            "replicas": [{"region": "eastus"}, {"region": "westus"}, {"region": "centralus"}],
            "credentials": {"secretRef": {"namespace": "geopin-system", "name": "acr-pull"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            **spec,
        })  # fmt: skip

    def patch_policy(self, spec: dict[str, Any]) -> None:
        self.policy.patch(spec)

    def delete_policy(self) -> None:
        self.policy.delete()

    def status(self) -> dict[str, Any]:
        return self.policy.status()

    def condition(self, type_: str) -> dict[str, Any] | None:
        return self.policy.condition(type_)

    # -- workloads and what the kubelet said --------------------------------------------------------

    def deployment(self, namespace: str, name: str, image: str, **pod: Any) -> None:
        self.apps.create_namespaced_deployment(namespace, host_network_deployment(name, image, **pod))

    def template_image(self, namespace: str, name: str) -> str:
        body = self.apps.read_namespaced_deployment(name, namespace)
        return str(body.spec.template.spec.containers[0].image)

    def running_pod(self, namespace: str, app: str, image: str) -> str | None:
        """A Pod of `app` whose container runs `image`, by name."""
        for pod in self.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items:
            # The spec's image: a status may name another tag of the same image (containerd's choice).
            statuses = pod.status.container_statuses or []
            if pod.spec.containers[0].image == image and statuses and statuses[0].state.running is not None:
                return str(pod.metadata.name)
        return None

    def events(self, namespace: str, reason: str, needle: str = "", pod: str | None = None) -> list[Any]:
        """The kubelet's Events with `reason` whose message contains `needle`, oldest first."""
        selector = f"involvedObject.name={pod}" if pod else ""
        items = self.core.list_namespaced_event(namespace, field_selector=selector).items
        found = [e for e in items if e.reason == reason and needle in (e.message or "")]
        return sorted(found, key=lambda e: e.metadata.creation_timestamp)


def kubelet_only(events: list[Any]) -> bool:
    """Every Event came from a kubelet (none was posted by a test or by geopin)."""
    return all((e.source.component if e.source else e.reporting_component) == "kubelet" for e in events)


@pytest.fixture(scope="module")
def cluster(node_env: NodeEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    install_crd(node_env.control_plane)
    node_env.push_pod_image(REPO, TAG)  # to every replica: replication is done
    api = node_env.control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    registry_pull_secret(core, node_env.acr)
    operator = Operator(node_env.control_plane, tmp_path_factory.mktemp("real-pulls-operator"), names=node_env.acr)
    operator.start()
    try:
        yield Cluster(node_env, api, operator)
    finally:
        operator.stop()
        core.delete_namespaced_secret("acr-pull", "geopin-system")
        api.close()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    pod_namespace(cluster.core, name)
    try:
        yield name
    finally:
        cluster.delete_policy()
        cluster.acr.heal()
        cluster.core.delete_namespace(name)


def test_pods_pull_from_the_pinned_replica_and_from_the_next_one_after_a_kill(cluster: Cluster, namespace: str) -> None:
    acr = cluster.acr
    east, west = (f"{acr[r].host}/{REPO}:{TAG}" for r in ("eastus", "westus"))
    global_image = f"{acr.login_server}/{REPO}:{TAG}"
    cluster.create_policy(namespace, probe={"intervalSeconds": 2, "timeoutSeconds": 1, "failbackDelaySeconds": 3600})
    cluster.deployment(namespace, "web", global_image)

    # Pinned by the derived name; the kubelet pulled from that host and the Pod runs.
    wait_until(lambda: cluster.template_image(namespace, "web") == east, timeout=60, what="pinned to eastus")
    pod = wait_until(lambda: cluster.running_pod(namespace, "web", east), timeout=PULL_TIMEOUT, what="web on eastus")
    pulled = cluster.events(namespace, "Pulled", f'"{east}"', pod=pod)
    assert pulled, "no Pulled Event naming contoso.eastus.geo.azurecr.io"
    assert kubelet_only(pulled)

    # The home replica is killed. geopin moves the template; a Pod pulling through the global
    # endpoint, created at the same moment, waits for ACR's (emulated) global failover.
    acr["eastus"].stop()
    killed = time.monotonic()
    cluster.core.create_namespaced_pod(namespace, host_network_pod("via-global", global_image, pull_policy="Always"))

    wait_until(lambda: cluster.template_image(namespace, "web") == west, timeout=30, what="repointed to westus")
    repointed = time.monotonic() - killed
    moved = wait_until(lambda: cluster.running_pod(namespace, "web", west), timeout=PULL_TIMEOUT, what="web on westus")
    geopin_running = time.monotonic() - killed
    assert cluster.events(namespace, "Pulled", f'"{west}"', pod=moved)

    failed = wait_until(
        lambda: cluster.events(namespace, "Failed", global_image, pod="via-global"),
        timeout=PULL_TIMEOUT,
        what="the global endpoint's pull failing while it still routes to eastus",
    )
    assert kubelet_only(failed)
    wait_until(lambda: container_state(cluster.core, namespace, "via-global") == "Running", timeout=PULL_TIMEOUT,
               interval=0.2, what="the global endpoint's Pod running after its failover")  # fmt: skip
    global_running = time.monotonic() - killed
    delay = acr.global_endpoint.failover_delay
    attempts = sum(e.count or 1 for e in cluster.events(namespace, "Failed", global_image, pod="via-global"))
    print(
        f"after the kill: template repointed in {repointed:.1f}s, its new Pod running in {geopin_running:.1f}s; "
        f"through the global endpoint ({delay:g}s failover delay): {attempts} failed pulls, running in "
        f"{global_running:.1f}s"
    )
    assert global_running >= delay
    assert geopin_running < global_running


def test_node_image_check_reports_then_enforces_the_global_endpoint(
    cluster: Cluster, namespace: str, extra_nodes: Callable[..., Node]
) -> None:
    acr = cluster.acr
    east, global_image = f"{acr['eastus'].host}/{REPO}:{TAG}", f"{acr.login_server}/{REPO}:{TAG}"
    old = extra_nodes("aks-nodepool2-0", credential_provider=AKS_BEFORE_GEO)  # node image 202607.22
    cluster.create_policy(namespace, credentials={
        "secretRef": {"namespace": "geopin-system", "name": "acr-pull"}, "nodeImageCheck": "Report",
    })  # fmt: skip
    cluster.deployment(namespace, "web", global_image, node_name=old.name)

    # Report: pinned regionally as usual, and the old node is named.
    wait_until(lambda: cluster.template_image(namespace, "web") == east, timeout=60, what="pinned to eastus")
    condition = wait_until(lambda: cluster.condition("NodeCredentials"), timeout=30, what="NodeCredentials")
    assert (condition["status"], condition["reason"]) == ("False", "NodeImageTooOld")
    assert f"{old.name} (1 nodes, {AKS_BEFORE_GEO.node_image_version})" in condition["message"]
    assert SESSION_NODE not in condition["message"]
    # ...and on that node the regional pull gets the kubelet's real 401.
    failed = wait_until(lambda: cluster.events(namespace, "Failed", "401 Unauthorized"), timeout=PULL_TIMEOUT,
                        what="the kubelet's 401 for the regional host")  # fmt: skip
    assert east in failed[0].message
    assert kubelet_only(failed)

    # Enforce: while that node is schedulable, the workload (no pull secrets of its own) uses the
    # global endpoint, which every AKS node image covers; its Pod on the old node pulls and runs.
    cluster.patch_policy({"credentials": {"nodeImageCheck": "Enforce"}})
    wait_until(lambda: cluster.template_image(namespace, "web") == global_image, timeout=30, what="global endpoint")
    wait_until(lambda: cluster.running_pod(namespace, "web", global_image), timeout=PULL_TIMEOUT,
               what="web running from the global endpoint on the old node")  # fmt: skip
    wait_until(lambda: cluster.status().get("activeRegion") == "global", timeout=30, what="status: global")
    status = cluster.status()
    assert status["lastSwitch"]["reason"] == "NodeCredentialsAtRisk"
    assert (cluster.condition("NodeCredentials") or {}).get("reason") == "EnforcingGlobalEndpoint"

    # Cordoned, the old node takes no new Pods: Enforce lets go, and the template is regional again.
    cluster.core.patch_node(old.name, {"spec": {"unschedulable": True}})
    wait_until(lambda: cluster.template_image(namespace, "web") == east, timeout=30, what="back to eastus")
    wait_until(lambda: cluster.status().get("activeRegion") == "eastus", timeout=30, what="status: eastus again")
    assert cluster.status()["lastSwitch"]["reason"] == "NodeCredentialsCovered"


def test_a_real_pull_failure_from_a_dead_replica_probes_it_at_once(cluster: Cluster, namespace: str) -> None:
    acr = cluster.acr
    east, west = (f"{acr[r].host}/{REPO}:{TAG}" for r in ("eastus", "westus"))
    interval = 60
    cluster.create_policy(namespace, probe={"intervalSeconds": interval, "timeoutSeconds": 2})
    cluster.deployment(namespace, "web", f"{acr.login_server}/{REPO}:{TAG}", pull_policy="Always")
    wait_until(lambda: cluster.template_image(namespace, "web") == east, timeout=60, what="pinned to eastus")
    wait_until(lambda: cluster.running_pod(namespace, "web", east), timeout=PULL_TIMEOUT, what="web on eastus")

    acr["eastus"].stop()
    # A new Pod must pull (imagePullPolicy Always) from the dead replica: only the kubelet says so.
    cluster.apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 2}})
    failed = wait_until(lambda: cluster.events(namespace, "Failed", east), timeout=PULL_TIMEOUT,
                        what="the kubelet's pull failure from eastus")  # fmt: skip
    first_failure = time.monotonic()
    wait_until(lambda: cluster.template_image(namespace, "web") == west, timeout=interval / 2,
               what="repointed long before the next scheduled probe")  # fmt: skip
    elapsed = time.monotonic() - first_failure
    print(f"kubelet pull failure -> repointed in {elapsed:.1f}s (probe interval {interval}s)")
    assert kubelet_only(failed)
    assert "a pull from eastus failed (Failed); probing it now" in cluster.operator.log()
    assert elapsed < interval / 2
