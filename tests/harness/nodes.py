"""Real nodes: per node, its own containerd (Debian's, CRI plugin) and a kubelet built from the
control plane's pins, registered with the control plane, pulling from the registry replicas.

A node owns one directory and everything in it; two environments on one machine never share a
socket, a state directory or a port:

    <node dir>/containerd.sock          containerd's API (the kubelet's container runtime endpoint)
    <node dir>/containerd/              root, state, opt; runc's state in runc/
    <node dir>/certs.d/<host>/hosts.toml  one per registry host: trust the run's CA
    <node dir>/cni/                     a network configuration with only `loopback` (see below)
    <node dir>/kubelet/                 the kubelet's root dir (pods, volumes, plugins)
    <node dir>/pod-logs/                the kubelet's podLogsDir
    <node dir>/credential-provider/     the kubelet's credential provider config, plugin and credentials

The files are written from tests/harness/nodeconfig.py; stopping runs tests/harness/nodecleanup.py.

Pods use hostNetwork. The registries, the API server and every name the environment serves are
loopback addresses, which a pod network namespace could not reach anyway, and a bridge network
would leave interfaces, routes and iptables rules on the host. The CRI plugin still needs one CNI
network configuration to report NetworkReady; it gets a `loopback`-only one, and a Pod without
hostNetwork fails its sandbox with containerd's "failed to find network info" error.

Processes: containerd and the kubelet are children of the harness (attached, dying with it, or
detached for `dev-up`). containerd starts one shim per pod sandbox (containerd-shim-runc-v2, which
outlives containerd by design) and the shim starts the containers through geopin-runc, runc minus
`process.oomScoreAdj` (these VMs refuse a negative score even to root).

`Node.stop()` (and `teardown()`, which `dev-down` uses with recorded pids) stops the kubelet,
deletes every containerd task (the shims unmount the rootfs and exit), kills any shim left with its
containers, stops containerd, then unmounts whatever is still mounted under the node directory
(pod volumes, sandbox shm, the kubelet's rshared bind of its root dir) and removes the kubelet's
log symlinks from /var/log/containers.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tests.harness import oci, procs
from tests.harness.controlplane import REGION_LABEL, _kubeconfig
from tests.harness.nodecleanup import NodeError, ctr, direct, teardown
from tests.harness.nodeconfig import (
    AKS_WITH_GEO,
    CREDENTIAL_PROVIDER_PLUGIN,
    HACK_NODE,
    SANDBOX_IMAGE,
    CredentialProviderList,
    NodePaths,
    containerd_config,
    hosts_toml,
    kubelet_config,
    render_toml,
)
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

NODE_IMAGE_LABEL = "kubernetes.azure.com/node-image-version"
POD_BINARY = "geopin-pod"
# Unix socket paths are limited to 108 bytes; containerd appends ".ttrpc" to its own.
MAX_SOCKET_PATH = 100


def find_node_binaries() -> Path:
    """The directory holding kubelet, kube-scheduler, geopin-pod and geopin-runc (hack/node/build.sh).

    GEOPIN_NODE_ASSETS wins; otherwise the script builds first if the pins changed (about a
    minute once the control plane's modules are cached).
    """
    assets = os.environ.get("GEOPIN_NODE_ASSETS")
    if assets:
        return Path(assets)
    script = HACK_NODE / "build.sh"
    result = subprocess.run(["bash", str(script)], check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise NodeError(f"{script} failed with exit code {result.returncode} (its stderr is above)")
    return Path(result.stdout.strip().splitlines()[-1])


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@functools.cache
def _pod_binary(binaries: Path) -> bytes:
    return (binaries / POD_BINARY).read_bytes()


def pod_image(binaries: Path | None = None, *, label: str = "") -> oci.Image:
    """A runnable image: geopin-pod, which sleeps until SIGTERM, or serves HTTP when the Pod sets
    PORT (and MESSAGE). `label` lands in a file of its own, so different labels give different digests.
    """
    files = {POD_BINARY: _pod_binary(binaries or find_node_binaries())}
    if label:
        files["label.txt"] = f"{label}\n".encode()
    return oci.build_image(files, architecture=_architecture(), entrypoint=[f"/{POD_BINARY}"], executables={POD_BINARY})


# -- one node ---------------------------------------------------------------------------------------


class Node(procs.Service):
    """containerd + kubelet, registered as `name` with `topology.kubernetes.io/region=region` and
    `kubernetes.azure.com/node-image-version` (by default the one that ships `credential_provider`).

    `ca` is the run's CA: it signs the kubelet's client certificate (user system:node:<name>, group
    system:nodes) and serving certificate, and the registries' certificates. `launcher` and `env`
    start containerd and the kubelet where the registries' names resolve (tests/harness/nodeenv.py).

    Attributes after start(): `paths`, `processes` (containerd, kubelet), `kubelet_pid`,
    `ready_seconds` (start to Ready). `add_registry(host, auth)` trusts a registry host (and gives
    the credential provider its password) at any time; `remove_image(ref)` forgets a pulled image
    so that the next Pod pulls it again.
    """

    def __init__(
        self,
        name: str,
        region: str,
        control_plane: ControlPlane,
        ca: CA,
        *,
        workdir: Path,
        credential_provider: CredentialProviderList = AKS_WITH_GEO,
        node_image_version: str | None = None,
        node_ip: str = "127.0.0.1",
        binaries: Path | None = None,
        launcher: Callable[[Sequence[str]], list[str]] = direct,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        detach: bool = False,
        ready_timeout: float = 90.0,
    ) -> None:
        self.name = name
        self.region = region
        self.control_plane = control_plane
        self.ca = ca
        self.paths = NodePaths(workdir.resolve())
        if len(str(self.paths.socket)) > MAX_SOCKET_PATH:
            raise NodeError(f"{self.paths.socket} is too long for a unix socket: use a shorter workdir")
        self.credential_provider = credential_provider
        self.node_image_version = node_image_version or credential_provider.node_image_version
        self.node_ip = node_ip
        self._given_binaries = binaries
        self.launcher = launcher
        self.env = dict(os.environ if env is None else env)
        self.log_dir = log_dir or self.paths.root / "logs"
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.processes: list[procs.Process] = []
        self.registries: dict[str, tuple[str, str] | None] = {}
        self.ready_seconds: float | None = None
        self._began = 0.0
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """`stop()`, for `with`."""
        self.stop()

    @property
    def labels(self) -> dict[str, str]:
        return {REGION_LABEL: self.region, NODE_IMAGE_LABEL: self.node_image_version}

    @property
    def kubelet_pid(self) -> int:
        return self._process("kubelet").pid

    @property
    def containerd_pid(self) -> int:
        return self._process("containerd").pid

    def start(self) -> None:
        """launch() then wait_ready()."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Write the configuration, start containerd, import the sandbox image, start the kubelet."""
        self._began = time.monotonic()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the Node object's Ready condition (registration, CRI status, first status update)."""
        from kubernetes import client

        with self.control_plane.api_client() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                self._check_alive()
                try:
                    node = core.read_node(self.name)
                except client.ApiException as error:
                    if error.status == 404:
                        return False
                    raise
                conditions = (node.status and node.status.conditions) or []
                return any(c.type == "Ready" and c.status == "True" for c in conditions)

            try:
                wait_until(ready, timeout=timeout or self.ready_timeout, interval=0.2, what=f"node {self.name} Ready")
            except BaseException:
                self.stop()
                raise
        self.ready_seconds = time.monotonic() - self._began
        print(f"node {self.name} ({self.region}) Ready in {self.ready_seconds:.1f}s", file=sys.stderr)

    def stop(self) -> None:
        """Stop the kubelet, the pods and containerd; unmount everything under the node dir. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        kubelet = [p for p in self.processes if p.name.endswith("kubelet")]
        containerd = [p for p in self.processes if p.name.endswith("containerd")]
        teardown(
            self.paths,
            stop_kubelet=lambda: procs.terminate(kubelet, timeout=10.0),
            containerd_alive=lambda: any(p.alive() for p in containerd),
            stop_containerd=lambda: procs.terminate(containerd, timeout=10.0),
            launcher=self.launcher,
        )

    # -- registries and images ---------------------------------------------------------------------

    def add_registry(self, host: str, auth: tuple[str, str] | None = None) -> None:
        """Trust the run's CA for `host` ("name" or "name:port"); with `auth`, the credential provider
        answers those credentials for images on `host` (when the node's matchImages cover it)."""
        self.registries[host] = auth
        directory = self.paths.certs_d / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(render_toml(hosts_toml(host, self.ca.cert_path)))
        self._write_credentials()

    def ctr(self, *args: str, timeout: float = 30.0) -> str:
        return ctr(self.paths, *args, launcher=self.launcher, timeout=timeout)

    def container_log(self, namespace: str, pod: str, container: str) -> list[str]:
        """The lines a container wrote, from the kubelet's log files. `kubectl logs` cannot reach a
        kubelet here: it refuses a loopback node IP, so the Node has no address for the API server."""
        lines: list[str] = []
        for directory in sorted(self.paths.pod_logs.glob(f"{namespace}_{pod}_*/{container}")):
            latest = max(directory.glob("*.log"), key=lambda f: int(f.stem), default=None)
            if latest is not None:
                # CRI log format: "<time> <stream> <P|F> <text>".
                lines += [line.split(" ", 3)[3] for line in latest.read_text().splitlines() if line.count(" ") >= 3]
        return lines

    def images(self) -> dict[str, str]:
        """Image name -> manifest digest, as containerd's k8s.io namespace lists them."""
        listing: dict[str, str] = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                listing[fields[0]] = fields[2]
        return listing

    def remove_image(self, reference: str) -> list[str]:
        """Remove `reference` and every other name of the same image (the CRI plugin records a
        repo digest and an image ID too), so the kubelet must pull it again. Returns the names removed."""
        listing = self.images()
        digest = listing.get(reference)
        if digest is None:
            return []
        names = [name for name, target in listing.items() if target == digest]
        self.ctr("images", "rm", *names)
        return names

    def import_image(self, image: oci.Image, name: str, *, pinned: bool = False) -> None:
        """Import `image` as `name` into containerd's k8s.io namespace, unpacked for the native snapshotter."""
        with tempfile.NamedTemporaryFile(dir=self.paths.root, suffix=".tar") as archive:
            archive.write(oci.layout_archive(image, name))
            archive.flush()
            self.ctr("images", "import", "--snapshotter", "native", archive.name)
        if pinned:
            # The CRI plugin reports such images as pinned; the kubelet never garbage-collects them.
            self.ctr("images", "label", name, "io.cri-containerd.pinned=pinned")

    # -- internals ---------------------------------------------------------------------------------

    def _process(self, suffix: str) -> procs.Process:
        for p in self.processes:
            if p.name.endswith(suffix):
                return p
        raise NodeError(f"node {self.name} has no {suffix} process")

    def _check_alive(self) -> None:
        for p in self.processes:
            if not p.alive():
                raise NodeError(f"{p.name} exited with {p.popen.returncode}; last log lines:\n{p.log_tail()}")

    def _write_credentials(self) -> None:
        listing = {host: {"username": a[0], "password": a[1]} for host, a in self.registries.items() if a}
        self.paths.credential_provider.mkdir(parents=True, exist_ok=True)
        temporary = self.paths.credentials.with_suffix(".tmp")
        temporary.write_text(json.dumps(listing))
        temporary.chmod(0o600)
        temporary.replace(self.paths.credentials)  # the plugin may read it at any moment

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> procs.Process:
        process = procs.spawn(
            f"{self.name}-{name}",
            self.launcher(argv),
            self.log_dir / f"{self.name}-{name}.log",
            detach=self.detach,
            env=env,
        )
        self.processes.append(process)
        return process

    def _launch(self) -> None:
        paths = self.paths
        binaries = self._given_binaries or find_node_binaries()
        ca = self.ca
        for directory in (paths.root, paths.certs_d, paths.cni / "bin", paths.cni / "net.d", paths.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)

        # containerd
        paths.containerd_config.write_text(
            render_toml(containerd_config(paths, runc_wrapper=binaries / "geopin-runc", stream_address=self.node_ip))
        )
        network = {"cniVersion": "0.4.0", "name": "geopin-host-network-only", "plugins": [{"type": "loopback"}]}
        (paths.cni / "net.d" / "10-host-network-only.conflist").write_text(json.dumps(network))
        runc = shutil.which("runc")
        if runc is None:
            raise NodeError("runc is not installed (Debian package: runc)")
        containerd = self._spawn(
            "containerd", ["containerd", "--config", str(paths.containerd_config)], {**self.env, "GEOPIN_RUNC": runc}
        )
        self._write_credentials()

        # kubelet configuration, written while containerd starts
        client_cert = ca.issue_client(f"kubelet-{self.name}", f"system:node:{self.name}", ("system:nodes",))
        serving = ca.issue_server(f"kubelet-{self.name}-serving", hosts=(self.node_ip, self.name))
        paths.kubelet_kubeconfig.write_text(
            yaml.safe_dump(_kubeconfig(self.control_plane.url, ca, f"system:node:{self.name}", client_cert))
        )
        paths.kubelet_kubeconfig.chmod(0o600)
        port, healthz_port = procs.free_port(), procs.free_port()
        paths.kubelet_config.write_text(
            yaml.safe_dump(
                kubelet_config(
                    paths,
                    address=self.node_ip,
                    port=port,
                    healthz_port=healthz_port,
                    ca=ca,
                    serving_cert=serving.cert_path,
                    serving_key=serving.key_path,
                )
            )
        )
        plugin_dir = paths.credential_provider / "bin"
        plugin_dir.mkdir(parents=True, exist_ok=True)
        plugin = plugin_dir / CREDENTIAL_PROVIDER_PLUGIN.name
        if not plugin.exists():
            plugin.symlink_to(CREDENTIAL_PROVIDER_PLUGIN)
        provider_config = paths.credential_provider / "config.yaml"
        provider_config.write_text(yaml.safe_dump(self.credential_provider.config(paths.credentials)))

        def containerd_up() -> bool:
            if not containerd.alive():
                raise NodeError(f"containerd exited; last log lines:\n{containerd.log_tail()}")
            try:
                self.ctr("version", timeout=5.0)
            except NodeError:
                return False
            return True

        wait_until(containerd_up, timeout=30.0, interval=0.05, what=f"containerd of node {self.name}")
        self.import_image(pod_image(binaries, label="sandbox"), SANDBOX_IMAGE, pinned=True)

        labels = ",".join(f"{key}={value}" for key, value in self.labels.items())
        self._spawn(
            "kubelet",
            [
                str(binaries / "kubelet"),
                f"--config={paths.kubelet_config}",
                f"--kubeconfig={paths.kubelet_kubeconfig}",
                f"--root-dir={paths.kubelet_root}",
                f"--cert-dir={paths.kubelet_root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={labels}",
                f"--image-credential-provider-config={provider_config}",
                f"--image-credential-provider-bin-dir={plugin_dir}",
                f"--containerd={paths.socket}",  # cAdvisor's view of the same containerd
                "--v=2",
            ],
            self.env,
        )


class NodeSet(procs.Service, Mapping[str, Node]):
    """Nodes started together (launched one after the other, then awaited together)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self._nodes = {node.name: node for node in nodes}

    def __getitem__(self, name: str) -> Node:
        return self._nodes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def close(self) -> None:
        """`stop()`, for `with`."""
        self.stop()

    def start(self) -> None:
        try:
            for node in self.values():
                node.launch()
            for node in self.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def add_registry(self, host: str, auth: tuple[str, str] | None = None) -> None:
        for node in self.values():
            node.add_registry(host, auth)

    def stop(self) -> None:
        """Stop every node, even if stopping one fails (the first error is re-raised at the end)."""
        procs.close_all(self.values())
