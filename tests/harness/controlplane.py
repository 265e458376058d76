"""A real local control plane: etcd, kube-apiserver and kube-controller-manager on 127.0.0.1.

By default no kubelet and no scheduler: Deployments get ReplicaSets and Pods (Pending forever),
which is all most of geopin's tests need to see, and three fake Node objects carry the region
labels. With `with_nodes=True` it is ready for real kubelets (tests/harness/nodes.py): it also
runs kube-scheduler, authorizes kubelets with the Node authorizer and NodeRestriction, and gives
the API server a client certificate for kubelets. Binaries come from hack/controlplane/build.sh
(or KUBEBUILDER_ASSETS); kube-scheduler from hack/node/build.sh (or GEOPIN_NODE_ASSETS).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from tests.harness import procs
from tests.harness.pki import CA, CertPair, write_key_pair
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION_LABEL = "topology.kubernetes.io/region"
ADMIN_USER = "geopin-admin"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# The cloud controllers need a cloud provider; they are off by default, and disabled here explicitly.
CONTROLLERS = "*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One event per request (ResponseComplete), so counting lines counts requests.
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": sorted(WRITE_VERBS)},
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    pass


def find_binaries(module: str | None = None) -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl.

    KUBEBUILDER_ASSETS wins (build.sh honours it too); otherwise build.sh prints its cache
    directory, building first if the pins changed (minutes, once). ``module``: another pinned
    wrapper module under hack/ instead (``"controlplane-1.36"``: etcd and kube-apiserver only).
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and module is None:
        return Path(assets)
    script = REPO_ROOT / "hack" / "controlplane" / "build.sh"
    argv = ["bash", str(script), *([str(REPO_ROOT / "hack" / module)] if module else [])]
    # stderr stays attached: a first build takes minutes and reports its progress there.
    result = subprocess.run(argv, check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"{script} failed with exit code {result.returncode} (its stderr is above)")
    return Path(result.stdout.strip().splitlines()[-1])


# Kubernetes 1.35 serves MutatingAdmissionPolicy as admissionregistration.k8s.io/v1beta1 only, and only so.
MAP_BETA_APISERVER_ARGS = (
    "--feature-gates=MutatingAdmissionPolicy=true",
    "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
)


def binaries_1_36(directory: Path) -> Path:
    """etcd and kube-apiserver 1.36 (hack/controlplane-1.36, where MutatingAdmissionPolicy is GA as v1) in
    ``directory``, with the default kube-controller-manager and kubectl (1.35) beside them: a supported
    skew, since a controller manager may be one minor version older than its API server."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = {"etcd": "controlplane-1.36", "kube-apiserver": "controlplane-1.36"}
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        link = directory / name
        if not link.exists():
            link.symlink_to(find_binaries(sources.get(name)) / name)
    return directory


def _kubeconfig(server: str, ca: CA, user: str, client: CertPair) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "geopin", "cluster": {"server": server, "certificate-authority-data": b64(ca.cert_pem)}}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": "geopin", "context": {"cluster": "geopin", "user": user}}],
        "current-context": "geopin",
    }


class ControlPlane(procs.Service):
    """etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler `with_nodes`) with their
    own CA, ports and temp dir. `node_regions` are fake Nodes; pass () when real kubelets register.

    Use as a context manager or call start()/stop(). Attributes after start(): `url`, `kubeconfig`
    (admin kubeconfig path), `ca`, `admin` (client cert pair), `audit_log_path`, `node_names`,
    `startup_seconds`, `processes`.
    """

    def __init__(
        self,
        *,
        node_regions: Sequence[str] = ("eastus", "eastus", "eastus"),
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        ca: CA | None = None,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        binaries: Path | None = None,
        detach: bool = False,
        ready_timeout: float = 60.0,
        start_controller_manager: bool = True,
        with_nodes: bool = False,
        node_binaries: Path | None = None,
    ) -> None:
        self.node_regions = list(node_regions)
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self._given_ca = ca
        self._given_workdir = workdir
        self._given_log_dir = log_dir
        self._given_binaries = binaries
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.start_controller_manager = start_controller_manager
        self.with_nodes = with_nodes
        self._given_node_binaries = node_binaries
        self.processes: list[procs.Process] = []
        self.node_names = [f"geopin-node-{i}" for i in range(len(self.node_regions))]
        self.startup_seconds: float | None = None
        self._owns_workdir = False
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """`stop()`, for `with`."""
        self.stop()

    def start(self) -> None:
        if self._started:
            raise ControlPlaneError("already started")
        self._started = True
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        print(f"geopin control plane ready at {self.url} in {self.startup_seconds:.1f}s", file=sys.stderr)

    def stop(self) -> None:
        """Stop every process (SIGTERM, SIGKILL at the deadline) and remove the temp dir; idempotent."""
        try:
            # The controller manager and apiserver first, so neither logs etcd errors while it goes.
            procs.terminate([p for p in self.processes if p.name != "etcd"], timeout=10.0)
            procs.terminate(self.processes, timeout=10.0)
        finally:
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self._owns_workdir = False

    # -- faults --------------------------------------------------------------------------------

    def _process(self, name: str) -> procs.Process:
        return next(p for p in self.processes if p.name == name)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """SIGTERM kube-apiserver and start it again with the same flags (the audit log continues);
        returns once /readyz answers."""
        old = self._process("kube-apiserver")
        procs.terminate([old], timeout=10.0)
        self.processes.remove(old)
        self._spawn("kube-apiserver", old.argv)
        with httpx.Client(verify=self.ca.ssl_context(self.admin), timeout=2.0) as http:
            self._wait_ok(http, f"{self.url}/readyz", "kube-apiserver /readyz", time.monotonic() + timeout)

    def pause_etcd(self) -> None:
        """SIGSTOP etcd: every API request that needs storage hangs until resume_etcd()."""
        self._process("etcd").popen.send_signal(signal.SIGSTOP)

    def resume_etcd(self) -> None:
        self._process("etcd").popen.send_signal(signal.SIGCONT)

    # -- start ---------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._given_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="geopin-cp-"))
            self._owns_workdir = True
        else:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self._given_log_dir or self.workdir / "logs"
        bin_dir = self._given_binaries or find_binaries()
        pki_dir = self.workdir / "pki"
        self.ca = self._given_ca or CA(pki_dir)

        etcd_port, etcd_peer_port, api_port, kcm_port, scheduler_port = (procs.free_port() for _ in range(5))
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.url = f"https://127.0.0.1:{api_port}"

        serving = self.ca.issue_server(
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self.admin = self.ca.issue_client("admin", ADMIN_USER, ("system:masters",))
        kcm_client = self.ca.issue_client("kube-controller-manager-client", "system:kube-controller-manager")
        kcm_serving = self.ca.issue_server("kube-controller-manager")
        sa = write_key_pair(pki_dir, "service-account")

        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(self.url, self.ca, ADMIN_USER, self.admin)))
        kcm_kubeconfig = self.workdir / "kube-controller-manager.kubeconfig"
        kcm_kubeconfig.write_text(
            yaml.safe_dump(_kubeconfig(self.url, self.ca, "system:kube-controller-manager", kcm_client))
        )
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log_path = self.workdir / "audit.log"
        self.audit_log_path.touch()

        etcd_argv = [
            str(bin_dir / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        apiserver_argv = [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert_path}",
            f"--tls-private-key-file={serving.key_path}",
            f"--client-ca-file={self.ca.cert_path}",
            "--authorization-mode=Node,RBAC" if self.with_nodes else "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            f"--service-account-issuer={self.url}/",
            f"--service-account-key-file={sa.public_path}",
            f"--service-account-signing-key-file={sa.private_path}",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-maxsize=0",
            "--audit-log-mode=blocking",
            # The "kubernetes" Service would need a non-loopback endpoint; nothing here runs in-cluster.
            "--endpoint-reconciler-type=none",
            *(self._kubelet_apiserver_args() if self.with_nodes else []),
            *self.extra_apiserver_args,
        ]
        kcm_argv = [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--tls-cert-file={kcm_serving.cert_path}",
            f"--tls-private-key-file={kcm_serving.key_path}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--root-ca-file={self.ca.cert_path}",
            f"--service-account-private-key-file={sa.private_path}",
            f"--cluster-signing-cert-file={self.ca.cert_path}",
            f"--cluster-signing-key-file={self.ca.key_path}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--controllers={CONTROLLERS}",
            "--cluster-name=geopin",
            *self.extra_controller_manager_args,
        ]

        # All three at once: the apiserver retries etcd and the controller manager waits for the
        # apiserver, so starting them together costs nothing and saves seconds.
        self._spawn("etcd", etcd_argv)
        self._spawn("kube-apiserver", apiserver_argv)
        if self.start_controller_manager:
            self._spawn("kube-controller-manager", kcm_argv)
        if self.with_nodes:
            self._spawn("kube-scheduler", self._scheduler_argv(scheduler_port))
        # Importing the kubernetes client takes about a second: do it while the servers boot.
        import kubernetes.client  # noqa: F401

        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(verify=self.ca.ssl_context(self.admin), timeout=2.0) as http:
            self._wait_ok(http, f"{self.url}/readyz", "kube-apiserver /readyz", deadline)
            self._create_nodes(deadline)
            if self.with_nodes:
                with httpx.Client(verify=self.ca.ssl_context(), timeout=2.0) as scheduler_http:
                    scheduler_url = f"https://127.0.0.1:{scheduler_port}/healthz"
                    self._wait_ok(scheduler_http, scheduler_url, "kube-scheduler /healthz", deadline)
            if self.start_controller_manager:
                with httpx.Client(verify=self.ca.ssl_context(), timeout=2.0) as kcm_http:
                    kcm_url = f"https://127.0.0.1:{kcm_port}/healthz"
                    self._wait_ok(kcm_http, kcm_url, "kube-controller-manager /healthz", deadline)
                # Pods cannot be created in a namespace until its `default` ServiceAccount exists.
                self._wait_ok(
                    http,
                    f"{self.url}/api/v1/namespaces/default/serviceaccounts/default",
                    "the default ServiceAccount",
                    deadline,
                )

    def _kubelet_apiserver_args(self) -> list[str]:
        # Kubelets are users system:node:<name> in group system:nodes: the Node authorizer lets each
        # read what its own Pods need, NodeRestriction lets it write only its own Node and Pods.
        kubelet_client = self.ca.issue_client("kube-apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        return [
            "--enable-admission-plugins=NodeRestriction",
            # No kube-proxy: webhook (and aggregated API) calls go to a Service's endpoint address, not its
            # ClusterIP (kubernetes/kubernetes#79739), so a webhook behind a Service is reachable.
            "--enable-aggregator-routing=true",
            f"--kubelet-client-certificate={kubelet_client.cert_path}",
            f"--kubelet-client-key={kubelet_client.key_path}",
            f"--kubelet-certificate-authority={self.ca.cert_path}",
        ]

    def _scheduler_argv(self, port: int) -> list[str]:
        from tests.harness.nodes import find_node_binaries

        client = self.ca.issue_client("kube-scheduler-client", "system:kube-scheduler")
        serving = self.ca.issue_server("kube-scheduler")
        kubeconfig = self.workdir / "kube-scheduler.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(_kubeconfig(self.url, self.ca, "system:kube-scheduler", client)))
        bin_dir = self._given_node_binaries or find_node_binaries()
        return [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={serving.cert_path}",
            f"--tls-private-key-file={serving.key_path}",
            "--leader-elect=false",
        ]

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes.append(procs.spawn(name, argv, self.log_dir / f"{name}.log", detach=self.detach))

    def _check_alive(self) -> None:
        for p in self.processes:
            if not p.alive():
                raise ControlPlaneError(f"{p.name} exited with {p.popen.returncode}; last log lines:\n{p.log_tail()}")

    def _wait_ok(self, http: httpx.Client, url: str, what: str, deadline: float) -> None:
        def ok() -> bool:
            self._check_alive()
            try:
                return http.get(url).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ok, timeout=max(0.0, deadline - time.monotonic()), interval=0.05, what=what)

    def _create_nodes(self, deadline: float) -> None:
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for name, region in zip(self.node_names, self.node_regions, strict=True):
                body = client.V1Node(
                    metadata=client.V1ObjectMeta(
                        name=name, labels={REGION_LABEL: region, "kubernetes.io/hostname": name}
                    )
                )
                # RBAC bootstrap policy may still be settling right after /readyz: retry briefly.
                wait_until(
                    functools.partial(core.create_node, body),
                    timeout=max(0.0, deadline - time.monotonic()),
                    what=f"creating node {name}",
                    ignore=(client.ApiException,),
                )

    # -- helpers for tests ---------------------------------------------------------------------

    def api_client(self, token: str | None = None) -> ApiClient:
        """A `kubernetes.client.ApiClient` as the admin (system:masters), or as the bearer `token`."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca.cert_path)
        configuration.verify_ssl = True
        if token is None:
            configuration.cert_file = str(self.admin.cert_path)
            configuration.key_file = str(self.admin.key_path)
        else:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def set_node_regions(self, regions: str | Sequence[str]) -> None:
        """Relabel the nodes: one region for all, or one per node in `node_names` order."""
        from kubernetes import client

        wanted = [regions] * len(self.node_names) if isinstance(regions, str) else list(regions)
        if len(wanted) != len(self.node_names):
            raise ValueError(f"need {len(self.node_names)} regions, got {len(wanted)}")
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for name, region in zip(self.node_names, wanted, strict=True):
                core.patch_node(name, {"metadata": {"labels": {REGION_LABEL: region}}})
        self.node_regions = wanted

    def audit_line_count(self) -> int:
        """The number of complete audit lines so far: pass it as `since_line` to count later writes."""
        return len(self._audit_lines())

    def audit_events(self, since_line: int = 0) -> list[dict[str, Any]]:
        """Parsed audit events (write requests only, by policy) from line `since_line` on."""
        return [json.loads(line) for line in self._audit_lines()[since_line:]]

    def audit_writes(
        self,
        since_line: int = 0,
        resource: str | None = None,
        user: str | None = None,
        *,
        namespace: str | None = None,
        verbs: frozenset[str] = WRITE_VERBS,
        subresource: str | None = None,
    ) -> int:
        """Count write requests since `since_line`, filtered by resource (plural, e.g. "deployments"),
        user name (e.g. ADMIN_USER or "system:serviceaccount:ns:name"), namespace and subresource."""
        count = 0
        for event in self.audit_events(since_line):
            ref = event.get("objectRef") or {}
            if event.get("verb") not in verbs:
                continue
            if resource is not None and ref.get("resource") != resource:
                continue
            if subresource is not None and ref.get("subresource") != subresource:
                continue
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if user is not None and (event.get("user") or {}).get("username") != user:
                continue
            count += 1
        return count

    def _audit_lines(self) -> list[str]:
        data = self.audit_log_path.read_text()
        # A line still being written has no newline yet: leave it for the next read.
        return data.splitlines()[: data.count("\n")]
