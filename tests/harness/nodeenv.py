"""Real nodes in the ACR-shaped environment: the control plane ready for kubelets, the replicas with
ACR's names (tests/harness/acr.py), and nodes (tests/harness/nodes.py) that run inside the replicas'
name space, trust their CA, and pull with the registry's credentials through AKS's credential
provider lists.

    with NodeEnvironment(ca, acr, workdir=tmp) as env:      # one node, eastus, the 202607.29 list
        env.push_pod_image("shop/web", "1")                   # to every replica
        core.create_namespaced_pod(ns, host_network_pod("web", f"{env.acr['eastus'].host}/shop/web:1"))
        old = env.start_node("aks-old", credential_provider=AKS_BEFORE_GEO)   # stopped with env
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness import oci, procs
from tests.harness.controlplane import ControlPlane
from tests.harness.nodecleanup import NodeError, mounts_under
from tests.harness.nodeconfig import AKS_WITH_GEO
from tests.harness.nodes import Node, NodeSet, pod_image
from tests.harness.objects import pull_secret
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.harness.acr import AcrRegistrySet
    from tests.harness.nodeconfig import CredentialProviderList
    from tests.harness.pki import CA


# Paths every kubelet uses whatever its flags: the device-plugin registration socket
# (/var/lib/kubelet/device-plugins/kubelet.sock) and the container log links (/var/log/containers).
FIXED_KUBELET_PATHS = ("/var/lib/kubelet", "/var/log/containers")


def private_fixed_paths(launcher: Callable[[Sequence[str]], list[str]], directory: Path) -> None:
    """Bind per-environment directories over FIXED_KUBELET_PATHS inside the environment's private
    mount namespace (`launcher` enters it), so two environments on one machine do not share them and
    nothing is left on the host but the empty mount points. Idempotent."""
    for fixed in FIXED_KUBELET_PATHS:
        if fixed in mounts_under(Path(fixed), launcher):
            continue
        Path(fixed).mkdir(parents=True, exist_ok=True)
        private = directory / fixed.strip("/").replace("/", "-")
        private.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(launcher(["mount", "--bind", str(private), fixed]), capture_output=True, text=True)
        if result.returncode != 0:
            raise NodeError(f"mount --bind {private} {fixed}: {result.stderr.strip()}")


def trust_acr(node: Node, acr: AcrRegistrySet) -> None:
    """Trust every host of `acr` on `node`, and give its credential provider the registry's password
    for the login server and the regional hosts (the data endpoints take none: ACR's take a signed URL)."""
    credentialed = {acr.login_server, *(replica.host for replica in acr.values())}
    for host in acr.hosts:
        node.add_registry(host, acr.auth if host in credentialed else None)


def push_pod_image(
    acr: AcrRegistrySet, repo: str, tag: str, *, regions: Sequence[str] | None = None, label: str = ""
) -> str:
    """Push a runnable pod_image() as `repo:tag` to the replicas of `regions` (default: all); its digest."""
    image = pod_image(label=label)
    for region in regions if regions is not None else list(acr):
        with acr[region].client() as http:
            oci.push(http, repo, tag, image)
    return image.digest


def pod_namespace(core: Any, name: str, timeout: float = 30.0) -> None:
    """Create namespace `name` and wait for its `default` ServiceAccount (made by the controller
    manager): Pods cannot be created in it before. `core` is a kubernetes CoreV1Api."""
    core.create_namespace({"metadata": {"name": name}})
    wait_for_service_account(core, name, timeout)


def wait_for_service_account(core: Any, namespace: str, timeout: float = 30.0) -> None:
    """Wait for `namespace`'s `default` ServiceAccount, made by the controller manager soon after the
    namespace: Pods cannot be created in it before."""
    from kubernetes import client

    def service_account() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except client.ApiException:
            return False
        return True

    wait_until(service_account, timeout=timeout, what=f"ServiceAccount {namespace}/default")


def registry_pull_secret(core: Any, acr: AcrRegistrySet, name: str = "acr-pull") -> None:
    """Create, or replace, Secret geopin-system/`name` with the registry's password, and its namespace
    if absent. Idempotent: test modules that share one environment (one per xdist worker) may each
    make it, and a module that failed before its teardown must not break the next one."""
    from kubernetes import client

    try:
        core.create_namespace({"metadata": {"name": "geopin-system"}})
    except client.ApiException as e:
        if e.status != 409:
            raise
    secret = pull_secret(name, acr.login_server, acr.auth)
    try:
        core.create_namespaced_secret("geopin-system", secret)
    except client.ApiException as e:
        if e.status != 409:
            raise
        core.replace_namespaced_secret(name, "geopin-system", secret)


def container_state(core: Any, namespace: str, pod: str) -> str | None:
    """ "Running", or the reason the Pod's first container waits (ErrImagePull, ImagePullBackOff, ...),
    or None before it has a status."""
    statuses = core.read_namespaced_pod(pod, namespace).status.container_statuses or []
    if not statuses:
        return None
    state = statuses[0].state
    if state.running is not None:
        return "Running"
    return state.waiting.reason if state.waiting is not None else None


def host_network_pod(
    name: str,
    image: str,
    *,
    node_name: str | None = None,
    port: int | None = None,
    message: str = "",
    pull_policy: str = "IfNotPresent",
) -> dict[str, Any]:
    """A Pod manifest that runs `image` (a pod_image()) with hostNetwork, on `node_name` if given,
    serving `message` on 127.0.0.1:`port` if given."""
    env = [] if port is None else [{"name": "PORT", "value": str(port)}, {"name": "MESSAGE", "value": message}]
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": pull_policy, "env": env}],
    }
    if node_name is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node_name}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def host_network_deployment(name: str, image: str, *, replicas: int = 1, **pod: Any) -> dict[str, Any]:
    """A Deployment of `replicas` host_network_pod()s of `image` (labelled app=`name`); `pod`: its options."""
    spec = host_network_pod(name, image, **pod)["spec"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


class NodeEnvironment(procs.Service):
    """A control plane with kube-scheduler, `node_regions` real nodes named aks-nodepool1-<i>, all
    in `acr`'s name space (the replicas are the caller's: a session's `acr` fixture, or dev-up's).

    Attributes after start(): `control_plane`, `acr`, `nodes` (NodeSet), `ready_seconds` (start to
    every node Ready). `start_node()` adds a node later (stopped with the environment or by the caller).
    """

    def __init__(
        self,
        ca: CA,
        acr: AcrRegistrySet,
        *,
        workdir: Path,
        node_regions: Sequence[str] = ("eastus",),
        credential_provider: CredentialProviderList = AKS_WITH_GEO,
        log_dir: Path | None = None,
        detach: bool = False,
        control_plane: ControlPlane | None = None,
        node_addresses: Sequence[str] = (),
    ) -> None:
        """``node_addresses``: addresses of this network namespace (tests/harness/netns.py) the nodes take
        in turn, so that a node's hostNetwork Pods have its address as podIP and Services reach them;
        without them a node has no address at all."""
        self.ca = ca
        self.acr = acr
        self.workdir = workdir
        self.log_dir = log_dir or workdir / "logs"
        self.detach = detach
        self.credential_provider = credential_provider
        self.control_plane = control_plane or ControlPlane(
            ca=ca,
            node_regions=(),
            with_nodes=True,
            workdir=workdir / "controlplane",
            log_dir=self.log_dir,
            detach=detach,
        )
        self._address_pool = list(node_addresses)
        self.addresses: list[str] = []
        self.nodes = NodeSet(
            [self._node(f"aks-nodepool1-{i}", region, credential_provider) for i, region in enumerate(node_regions)]
        )
        self.extra: list[Node] = []
        self.ready_seconds: float | None = None

    def _node(self, name: str, region: str, credential_provider: CredentialProviderList) -> Node:
        """A node (not started) that runs in the replicas' name space and trusts them."""
        node = Node(
            name,
            region,
            self.control_plane,
            self.ca,
            node_ip=self._take_address(),
            workdir=self.workdir / "nodes" / name,
            credential_provider=credential_provider,
            launcher=self.acr.command,
            env=self.acr.env(),
            log_dir=self.log_dir,
            detach=self.detach,
        )
        trust_acr(node, self.acr)
        return node

    def _take_address(self) -> str:
        if not self._address_pool:
            if self.addresses:
                raise NodeError("no node address left in this environment's pool")
            return "127.0.0.1"  # no address of its own: its Node has none, its Pods no podIP
        self.addresses.append(self._address_pool.pop(0))
        return self.addresses[-1]

    def start(self) -> None:
        began = time.monotonic()
        try:
            if not self.acr.namespace.alive():
                raise NodeError("start the ACR-shaped replicas first: the nodes run in their name space")
            private_fixed_paths(self.acr.command, self.workdir / "fixed")
            self.control_plane.start()
            self.nodes.start()
        except BaseException:
            self.close()
            raise
        self.ready_seconds = time.monotonic() - began
        print(f"{len(self.nodes)} node(s) Ready in {self.ready_seconds:.1f}s", file=sys.stderr)

    def start_node(
        self, name: str, region: str = "eastus", *, credential_provider: CredentialProviderList | None = None
    ) -> Node:
        """Start one more node and wait for it to be Ready; `close()` stops it if the caller has not."""
        node = self._node(name, region, credential_provider or self.credential_provider)
        self.extra.append(node)
        node.start()
        return node

    def remove_node(self, node: Node) -> None:
        """Stop `node` and delete its Node object, so the scheduler forgets it at once."""
        from kubernetes import client

        node.stop()
        with self.control_plane.api_client() as api:
            try:
                client.CoreV1Api(api).delete_node(node.name)
            except client.ApiException as error:
                if error.status != 404:
                    raise

    def push_pod_image(self, repo: str, tag: str, *, regions: Sequence[str] | None = None, label: str = "") -> str:
        return push_pod_image(self.acr, repo, tag, regions=regions, label=label)

    def mounts(self) -> list[str]:
        """Mount points under the workdir, as seen inside the name space (outside there are none)."""
        return mounts_under(self.workdir, self.acr.command)

    def close(self) -> None:
        procs.close_all([*self.extra, *self.nodes.values(), self.control_plane])
