"""The whole shipping path: `make dev-up` (two real nodes), `make install-local`, then geopin at work as
the chart's two Pods, started from the image the repository builds, and `helm uninstall` at the end.

One test, in phases, on an environment of its own (its own state directory, control plane, replicas
and nodes):

1. Workloads exist before geopin does: Deployments of `contoso.azurecr.io/...`, one with a running Pod.
2. `make install-local`: both Pods Running from the pushed image (its manifest digest) on the two nodes,
   on their own addresses, one of them holding the Lease; /healthz and /metrics answer at each Pod's IP;
   the webhook's Service has both as endpoints.
3. A RegistryPolicy (Patch mode) pins every Deployment to eastus; the running Pod rolls to the regional
   image, which its node pulls with the credential provider. A second policy in Admission mode proves
   the API server reaches geopin's webhook through the chart's Service.
4. eastus is SIGKILLed; as soon as the leader has repointed its first Deployment, its Pod is deleted. The
   other Pod takes the Lease and finishes: every Deployment ends on westus, written exactly once, some
   by each Pod (the audit log names the Pod of every write).
5. Uninstall as docs/install.md says: policies deleted (restored), `helm uninstall`, the webhook
   configuration and the namespace deleted. Every Deployment is byte-identical to what it was before
   the install, nothing of geopin is left, and the CRD is kept (as Helm keeps it).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from kubernetes import client, config

from tests.harness import devenv, installlocal, netns, oci
from tests.harness.chart import tools_bin
from tests.harness.controlplane import REPO_ROOT, find_binaries
from tests.harness.names import resolving_transport
from tests.harness.nodes import pod_image
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMESPACE, RELEASE, SYSTEM = "shop", "geopin", "geopin-system"
REGISTRY = "contoso.azurecr.io"
APPS = 200  # enough that a repoint takes the leader longer than its deletion takes to stop it
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
GEOPIN_SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}"
REVISION = "deployment.kubernetes.io/revision"  # the Deployment controller's, not geopin's


def harness(dev_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.harness", "--dir", str(dev_dir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def dev_dir(short_dir: Callable[[str], Path]) -> Iterator[Path]:
    directory = short_dir("install") / ".dev"
    started = harness(directory, "up", "--nodes", "2", "--global-failover-delay", "10")
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield directory
    finally:
        if directory.exists():
            stopped = harness(directory, "down")
            assert stopped.returncode == 0, stopped.stderr[-3000:]


@pytest.fixture
def inside(dev_dir: Path) -> Iterator[None]:
    """The test's thread in the environment's network, where the API server and the Pods' addresses are.

    HEAD's image is built first, here, with the host's network (its Dockerfile installs from PyPI):
    `make install-local` then finds it in build/ and only pushes and installs.
    """
    installlocal.ensure_image()
    with netns.inside(devenv.holder_pid(dev_dir)):
        yield


class Cluster:
    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.api: Any = config.new_client_from_config(str(dev_dir / "kubeconfig"))
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.coordination: Any = client.CoordinationV1Api(self.api)
        self.admission: Any = client.AdmissionregistrationV1Api(self.api)
        self.registries = json.loads((dev_dir / "registries.json").read_text())
        self.nodes = json.loads((dev_dir / "nodes.json").read_text())
        self.audit_log = dev_dir / "controlplane" / "audit.log"

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(find_binaries() / "kubectl"), "--kubeconfig", str(self.dev_dir / "kubeconfig"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tools_bin() / "helm"), "--kubeconfig", str(self.dev_dir / "kubeconfig"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    def push_pod_image(self, repo: str, tag: str) -> None:
        """A runnable image, to every replica (as ACR's geo-replication would have it)."""
        image = pod_image(label=repo)
        hosts = {e["host"]: e["ip"] for e in self.registries.values()}
        verify = ssl.create_default_context(cafile=str(self.dev_dir / "ca.crt"))
        for region, entry in self.registries.items():
            if region == "global":
                continue
            with httpx.Client(
                base_url=f"https://{entry['host']}",
                auth=(entry["username"], entry["password"]),
                transport=resolving_transport(hosts, verify),
                timeout=30,
            ) as http:
                oci.push(http, repo, tag, image)

    def images(self) -> dict[str, str]:
        return {
            d.metadata.name: d.spec.template.spec.containers[0].image
            for d in self.apps.list_namespaced_deployment(NAMESPACE).items
        }

    def geopin_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=geopin").items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def leader(self) -> str:
        holder = self.coordination.read_namespaced_lease(RELEASE, SYSTEM).spec.holder_identity or ""
        return str(holder.rpartition("_")[0])

    def writes_by_pod(self, since_line: int) -> dict[str, int]:
        """Patches of Deployments in NAMESPACE by geopin since `since_line`, per Pod (bound token's pod-name)."""
        counts: dict[str, int] = {}
        for line in self.audit_log.read_text().splitlines()[since_line:]:
            event = json.loads(line)
            ref, user = event.get("objectRef") or {}, event.get("user") or {}
            if (event.get("verb"), ref.get("resource"), ref.get("namespace")) != ("patch", "deployments", NAMESPACE):
                continue
            if user.get("username") != GEOPIN_SA or (event.get("responseStatus") or {}).get("code") != 200:
                continue
            pod = (user.get("extra") or {}).get(POD_NAME_KEY, ["?"])[0]
            counts[pod] = counts.get(pod, 0) + 1
        return counts

    def audit_lines(self) -> int:
        return len(self.audit_log.read_text().splitlines())


def deployment(name: str, image: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name, "team": "shop"}, "annotations": {"owner": "shop-team"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                # The nodes give Pods no network of their own (docs/testing.md): the workload uses the host's.
                "spec": {
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "main", "image": image}],
                },
            },
        },
    }


def snapshot(cluster: Cluster) -> dict[str, str]:
    """Each Deployment's spec, labels and annotations (but the controller's revision), as canonical JSON."""
    found = {}
    for item in cluster.api.sanitize_for_serialization(cluster.apps.list_namespaced_deployment(NAMESPACE).items):
        metadata = item["metadata"]
        annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k != REVISION}
        found[metadata["name"]] = json.dumps(
            {"spec": item["spec"], "labels": metadata.get("labels"), "annotations": annotations}, sort_keys=True
        )
    return found


def policy(name: str, registry: str, mode: str, replicas: list[dict[str, str]], ca_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "geopin.io/v1alpha1",
        "kind": "RegistryPolicy",
        "metadata": {"name": name},
        "spec": {
            "registry": registry,
            "region": "auto",
            "replicas": replicas,
            "mode": mode,
            "probe": {"caBundle": ca_pem},
            "replicationCheck": False,
            # This file proves a repoint survives the leader's deletion half-way (Repoint strategy);
            # Redirect, the default, writes no template in an outage (test_redirect.py).
            "failover": {"strategy": "Repoint"},
        },
    }


def phase(name: str, began: float) -> float:
    now = time.monotonic()
    print(f"[install-local e2e] {name}: {now - began:.1f}s", file=sys.stderr)
    return now


@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("inside")
def test_install_local_fail_over_with_the_leader_pod_deleted_and_uninstall(dev_dir: Path) -> None:
    cluster = Cluster(dev_dir)
    ca_pem = (dev_dir / "ca.crt").read_text()
    east, west = (cluster.registries[r]["host"] for r in ("eastus", "westus"))
    t = time.monotonic()

    # -- 1. workloads before geopin -----------------------------------------------------------------------
    cluster.push_pod_image("shop/web", "1")
    cluster.core.create_namespace({"metadata": {"name": NAMESPACE}})
    cluster.apps.create_namespaced_deployment(NAMESPACE, deployment("web", f"{REGISTRY}/shop/web:1", 1))
    for i in range(APPS):
        cluster.apps.create_namespaced_deployment(NAMESPACE, deployment(f"app-{i:03}", f"{REGISTRY}/shop/app:{i}", 0))
    wait_until(
        lambda: cluster.apps.read_namespaced_deployment("web", NAMESPACE).status.ready_replicas == 1,
        timeout=120,
        what="the web Pod Running from the global endpoint before the install",
    )
    before = snapshot(cluster)
    assert len(before) == APPS + 1
    t = phase("workloads created", t)

    # -- 2. make install-local ----------------------------------------------------------------------------
    installed = subprocess.run(
        ["make", "install-local"],
        cwd=REPO_ROOT,
        env={**os.environ, "GEOPIN_DEV_DIR": str(dev_dir)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    t = phase("make install-local", t)
    summary = json.loads((REPO_ROOT / "build" / "image.summary.json").read_text())
    digest = summary["manifest"]

    # helm --wait returns once the Deployment is available: with hostNetwork (maxUnavailable: 1) that is
    # one Pod of two, and on a loaded machine the other may still be starting.
    def both_ready() -> list[Any] | None:
        pods = cluster.geopin_pods()
        ready = [
            p for p in pods if p.status.phase == "Running" and all(c.ready for c in p.status.container_statuses or [])
        ]
        return pods if len(pods) == len(ready) == 2 else None

    pods = wait_until(both_ready, timeout=180, what="both geopin Pods Running and Ready")
    node_ips = {n["name"]: n["ip"] for n in cluster.nodes}
    assert sorted(p.spec.node_name for p in pods) == sorted(node_ips)  # one per node
    for pod in pods:
        assert pod.spec.containers[0].image == f"{REGISTRY}/geopin@{digest}"
        assert pod.status.container_statuses[0].image_id.endswith(digest)  # what the node pulled and runs
        assert pod.status.pod_ip == node_ips[pod.spec.node_name]
        assert pod.spec.security_context.run_as_user == 65532
        healthz = f"http://{pod.status.pod_ip}:8081/healthz"

        def healthy(url: str = healthz) -> bool:
            return httpx.get(url, timeout=5).status_code == 200

        wait_until(healthy, timeout=60, ignore=(httpx.HTTPError,), what=f"{pod.metadata.name} answers {healthz}")
        metrics = httpx.get(f"http://{pod.status.pod_ip}:8080/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "# TYPE geopin_endpoint_switches_total counter" in metrics.text
    assert cluster.leader() in {p.metadata.name for p in pods}
    # Never restarted since helm's --wait saw them Ready (a crash would show here, with its reason).
    for pod in cluster.geopin_pods():
        status = pod.status.container_statuses[0]
        assert status.restart_count == 0, (pod.metadata.name, status.last_state)
    slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        SYSTEM, label_selector=f"kubernetes.io/service-name={RELEASE}"
    )
    addresses = sorted(a for s in slices.items for e in s.endpoints or [] for a in e.addresses)
    assert addresses == sorted(node_ips.values())
    hook = cluster.admission.read_mutating_webhook_configuration(RELEASE).webhooks[0]
    assert hook.client_config.service.name == RELEASE
    assert hook.client_config.service.namespace == SYSTEM
    assert (hook.failure_policy, hook.timeout_seconds) == ("Ignore", 2)
    # The chart's default: both replicas serve the pair geopin keeps in one Secret, whose CA is trusted.
    shared = cluster.core.read_namespaced_secret(f"{RELEASE}-webhook-tls", SYSTEM)
    assert base64.b64decode(hook.client_config.ca_bundle) == base64.b64decode(shared.data["ca.crt"])

    # -- 3. pinned; the webhook through the Service ------------------------------------------------------
    replicas = [{"region": "eastus"}, {"region": "westus"}]
    cluster.custom.create_cluster_custom_object(
        "geopin.io", "v1alpha1", "registrypolicies", policy("contoso", REGISTRY, "Patch", replicas, ca_pem)
    )
    wait_until(
        lambda: all(image.startswith(f"{east}/") for image in cluster.images().values()),
        timeout=120,
        what="every Deployment pinned to eastus",
    )
    wait_until(
        lambda: (
            [
                p.spec.containers[0].image
                for p in cluster.core.list_namespaced_pod(NAMESPACE, label_selector="app=web").items
                if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
            ]
            == [f"{east}/shop/web:1"]
        ),
        timeout=120,
        what="the web Pod Running from the regional endpoint (pulled with the credential provider)",
    )
    t = phase("pinned to eastus", t)

    fabrikam = policy("fabrikam", "fabrikam.azurecr.io", "Admission", [{"region": "eastus", "endpoint": east}], ca_pem)
    cluster.custom.create_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", fabrikam)

    def admitted() -> Any:
        name = f"admitted-{time.monotonic_ns()}"
        pod = cluster.core.create_namespaced_pod(
            NAMESPACE,
            {
                "metadata": {"name": name},
                "spec": {
                    "nodeSelector": {"geopin.io/no-such-node": "true"},  # only admitted, never run
                    "containers": [{"name": "main", "image": "fabrikam.azurecr.io/shop/tool:1"}],
                },
            },
        )
        cluster.core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        return pod if pod.spec.containers[0].image == f"{east}/shop/tool:1" else None

    pod = wait_until(admitted, timeout=60, interval=0.5, what="a Pod pinned at admission by geopin's webhook")
    assert pod.metadata.annotations["geopin.io/pinned-region"] == "eastus"
    served = 0.0
    for geopin_pod in cluster.geopin_pods():
        for line in httpx.get(f"http://{geopin_pod.status.pod_ip}:8080/metrics", timeout=5).text.splitlines():
            if line.startswith('geopin_admission_duration_seconds_count{result="mutated"}'):
                served += float(line.rpartition(" ")[2])
    assert served >= 1, "the mutation came from one of the chart's Pods"
    t = phase("webhook through the Service", t)

    # -- 4. failover, the leader Pod deleted mid-way --------------------------------------------------------
    leader = cluster.leader()
    since = cluster.audit_lines()
    os.kill(cluster.registries["eastus"]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: any(image.startswith(f"{west}/") for image in cluster.images().values()),
        timeout=60,
        interval=0.02,
        what="the first Deployment repointed to westus",
    )
    cluster.core.delete_namespaced_pod(leader, SYSTEM)
    deleted = time.monotonic()
    wait_until(
        lambda: all(image.startswith(f"{west}/") for image in cluster.images().values()),
        timeout=120,
        what="every Deployment repointed to westus",
    )
    done = time.monotonic()
    survivor = cluster.leader()
    assert survivor != leader
    assert survivor in {p.metadata.name for p in cluster.geopin_pods()}
    writes = cluster.writes_by_pod(since)
    print(
        f"[install-local e2e] failover: first repoint {deleted - killed:.1f}s after the SIGKILL, all {APPS + 1} "
        f"{done - killed:.1f}s after it; writes per Pod {writes}",
        file=sys.stderr,
    )
    assert sum(writes.values()) == APPS + 1, "each Deployment written exactly once"
    assert writes.get(leader, 0) >= 1
    assert writes.get(survivor, 0) >= 1, "the other Pod finished the failover"
    assert set(writes) == {leader, survivor}
    # The Deployment recreates the deleted Pod on the node it left; the image is already there.
    wait_until(
        lambda: len([p for p in cluster.geopin_pods() if p.status.phase == "Running"]) == 2,
        timeout=120,
        what="two geopin Pods Running again",
    )
    t = phase("failover with the leader deleted", t)

    # -- 5. uninstall as docs/install.md says ---------------------------------------------------------------
    cluster.kubectl("delete", "registrypolicies", "--all", "--wait=true", "--timeout=120s")
    cluster.helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait")
    cluster.kubectl("delete", "mutatingwebhookconfiguration", RELEASE, "--ignore-not-found")
    cluster.kubectl("delete", "namespace", SYSTEM, "--wait=true", "--timeout=120s")
    after = snapshot(cluster)
    assert after.keys() == before.keys()
    assert [name for name in before if after[name] != before[name]] == []
    left = cluster.kubectl(
        "get",
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,priorityclasses,registrypolicies",
        "-o",
        "name",
    ).stdout.split()
    assert [name for name in left if "geopin" in name] == []
    assert [n.metadata.name for n in cluster.core.list_namespace().items if n.metadata.name == SYSTEM] == []
    namespaced = cluster.kubectl(
        "get", "secrets,configmaps,leases,serviceaccounts", "-n", NAMESPACE, "-o", "name"
    ).stdout.split()
    assert [name for name in namespaced if "geopin" in name] == []
    assert cluster.kubectl("get", "crd", "registrypolicies.geopin.io", "-o", "name").stdout.strip() == (
        "customresourcedefinition.apiextensions.k8s.io/registrypolicies.geopin.io"
    )
    phase("uninstalled, workloads byte-identical", t)
    cluster.api.close()
