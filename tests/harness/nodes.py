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

import contextlib
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.harness import oci, procs
from tests.harness.controlplane import REGION_LABEL, REPO_ROOT, _kubeconfig
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

NODE_IMAGE_LABEL = "kubernetes.azure.com/node-image-version"
HACK_NODE = REPO_ROOT / "hack" / "node"
# The sandbox ("pause") image: imported, never pulled, so any name works; this one cannot be pulled.
SANDBOX_IMAGE = "geopin.local/pause:1"
POD_BINARY = "geopin-pod"
CONTAINER_NAMESPACE = "k8s.io"
# Unix socket paths are limited to 108 bytes; containerd appends ".ttrpc" to its own.
MAX_SOCKET_PATH = 100

BARE_TOML_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def direct(argv: Sequence[str]) -> list[str]:
    """The default launcher: run argv as it is. A launcher returns the argv that runs `argv` where
    the environment's names resolve (e.g. prefixed with nsenter into its mount namespace)."""
    return list(argv)


class NodeError(RuntimeError):
    pass


@dataclass(frozen=True)
class CredentialProviderList:
    """One of AKS's kubelet credential provider configurations (hack/node/credential-provider/)."""

    name: str
    path: Path
    # The `kubernetes.azure.com/node-image-version` a node shipping this list carries.
    node_image_version: str

    def config(self, credentials: Path) -> dict[str, Any]:
        """The configuration with the plugin's argument pointing at the node's credentials file."""
        document: dict[str, Any] = yaml.safe_load(self.path.read_text())
        for provider in document["providers"]:
            provider["args"] = [str(credentials)]
        return document

    @property
    def match_images(self) -> list[str]:
        document = yaml.safe_load(self.path.read_text())
        return [image for provider in document["providers"] for image in provider["matchImages"]]


AKS_BEFORE_GEO = CredentialProviderList(
    "aks-before-202607.29",
    HACK_NODE / "credential-provider" / "aks-before-202607.29.yaml",
    "AKSUbuntu-2204gen2containerd-202607.22.0",
)
AKS_WITH_GEO = CredentialProviderList(
    "aks-202607.29",
    HACK_NODE / "credential-provider" / "aks-202607.29.yaml",
    "AKSUbuntu-2204gen2containerd-202607.29.0",
)
CREDENTIAL_PROVIDER_PLUGIN = HACK_NODE / "credential-provider" / "acr-credential-provider"


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


# -- paths and configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class NodePaths:
    """Every path a node uses, derived from its directory (so `dev-down` can find them again)."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def runc_root(self) -> Path:
        return self.root / "containerd" / "runc"

    @property
    def certs_d(self) -> Path:
        return self.root / "certs.d"

    @property
    def cni(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def credential_provider(self) -> Path:
        return self.root / "credential-provider"

    @property
    def credentials(self) -> Path:
        return self.credential_provider / "credentials.json"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml(document: Mapping[str, Any], table: str = "") -> str:
    """A small TOML writer for nested tables of strings, numbers, booleans and lists."""
    lines = [f"{key} = {_toml_value(v)}" for key, v in document.items() if not isinstance(v, Mapping)]
    text = (f"[{table}]\n" if table and lines else "") + "".join(f"{line}\n" for line in lines)
    for key, value in document.items():
        if isinstance(value, Mapping):
            name = key if BARE_TOML_KEY.match(key) else json.dumps(key)
            text += "\n" + _toml(value, f"{table}.{name}" if table else name)
    return text


def containerd_config(paths: NodePaths, *, runc_wrapper: Path, stream_address: str) -> dict[str, Any]:
    cri = {
        "sandbox_image": SANDBOX_IMAGE,
        # No AppArmor profile loaded into the kernel (host state), no SELinux.
        "disable_apparmor": True,
        "stream_server_address": stream_address,
        "stream_server_port": "0",
        "containerd": {
            # The native snapshotter copies layers into directories: no overlay mounts to leak.
            "snapshotter": "native",
            "default_runtime_name": "runc",
            "runtimes": {
                "runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    "options": {
                        "BinaryName": str(runc_wrapper),
                        "Root": str(paths.runc_root),
                        "SystemdCgroup": False,
                    },
                }
            },
        },
        "cni": {"bin_dir": str(paths.cni / "bin"), "conf_dir": str(paths.cni / "net.d")},
        "registry": {"config_path": str(paths.certs_d)},
    }
    return {
        "version": 2,
        "root": str(paths.containerd / "root"),
        "state": str(paths.containerd / "state"),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.overlayfs",
            "io.containerd.snapshotter.v1.zfs",
        ],
        "grpc": {"address": str(paths.socket)},
        "plugins": {
            "io.containerd.grpc.v1.cri": cri,
            "io.containerd.internal.v1.opt": {"path": str(paths.containerd / "opt")},
        },
    }


def kubelet_config(
    paths: NodePaths,
    *,
    address: str,
    port: int,
    healthz_port: int,
    ca: CA,
    serving_cert: Path,
    serving_key: Path,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": address,
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        # Only holders of a certificate from the run's CA (the API server's kubelet client) get in.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca.cert_path)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        # What these VMs allow (docs/testing.md): cgroup v1 with cgroupfs, no QoS cgroup tree, no
        # node allocatable enforcement, swap tolerated.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        # The kubelet cannot lower its own score here either; 0 asks for no change.
        "oomScoreAdj": 0,
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.kubelet_root / "volume-plugins"),
        # No iptables chains on the host.
        "makeIPTablesUtilChains": False,
        # A shared development disk must neither evict test pods nor garbage-collect their images.
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }


# -- processes found by their command line ----------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def shim_pids(socket: Path) -> list[int]:
    """The containerd-shim-runc-v2 processes serving the containerd listening on `socket`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            argv = procs.pid_cmdline(int(entry.name))
            if argv and argv[0].endswith("containerd-shim-runc-v2") and _flag(argv, "-address") == str(socket):
                found.append(int(entry.name))
    return found


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _descendants(pids: Sequence[int]) -> list[int]:
    children = _children()
    found: list[int] = []
    pending = list(pids)
    while pending:
        pid = pending.pop()
        for child in children.get(pid, []):
            found.append(child)
            pending.append(child)
    return found


def kill_shims(socket: Path) -> int:
    """SIGKILL the shims of the containerd on `socket` and every process under them (the containers,
    which the shims' death alone would orphan). Returns how many processes were killed."""
    shims = shim_pids(socket)
    victims = [*_descendants(shims), *shims]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not any(procs.pid_alive(pid) for pid in victims),
        timeout=10.0,
        interval=0.05,
        what=f"the shims of {socket} to exit",
    )
    return len(victims)


# -- mounts ---------------------------------------------------------------------------------------


def _unescape_mount_path(field: str) -> str:
    # /proc/*/mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.encode().decode("unicode_escape")


def mounts_under(directory: Path, launcher: Callable[[Sequence[str]], list[str]] = direct) -> list[str]:
    """Mount points at or below `directory` in the mount namespace `launcher` runs in."""
    result = subprocess.run(launcher(["cat", "/proc/self/mountinfo"]), check=True, stdout=subprocess.PIPE, text=True)
    prefix = str(directory.resolve())
    found = []
    for line in result.stdout.splitlines():
        mount_point = _unescape_mount_path(line.split()[4])
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return found


def unmount_under(directory: Path, launcher: Callable[[Sequence[str]], list[str]] = direct) -> int:
    """Detach every mount at or below `directory`, deepest first; returns how many were detached."""
    detached = 0
    for _ in range(5):  # stacked mounts reappear one layer at a time
        mounts = mounts_under(directory, launcher)
        if not mounts:
            return detached
        ordered = sorted(set(mounts), key=lambda path: path.count("/"), reverse=True)
        subprocess.run(launcher(["umount", "--lazy", *ordered]), check=False, stderr=subprocess.DEVNULL)
        detached += len(mounts)
    left = mounts_under(directory, launcher)
    if left:
        raise NodeError(f"still mounted under {directory}: {left}")
    return detached


def remove_log_symlinks(paths: NodePaths) -> None:
    """The kubelet links every container log into /var/log/containers (a fixed path): remove ours."""
    legacy = Path("/var/log/containers")
    if not legacy.is_dir():
        return
    prefix = str(paths.pod_logs) + "/"
    for link in legacy.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()


def ctr(
    paths: NodePaths, *args: str, launcher: Callable[[Sequence[str]], list[str]] = direct, timeout: float = 30.0
) -> str:
    """Run `ctr` against the node's containerd in the k8s.io namespace; its stdout."""
    argv = launcher(["ctr", "--address", str(paths.socket), "--namespace", CONTAINER_NAMESPACE, *args])
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise NodeError(f"ctr {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def teardown(
    paths: NodePaths,
    *,
    stop_kubelet: Callable[[], None],
    containerd_alive: Callable[[], bool],
    stop_containerd: Callable[[], None],
    launcher: Callable[[Sequence[str]], list[str]] = direct,
) -> None:
    """Stop a node and leave nothing behind: no process, no mount, no log link."""
    try:
        stop_kubelet()
        if containerd_alive():
            # Deleting a task makes its shim unmount the rootfs and exit; ctr waits for each.
            with contextlib.suppress(NodeError, subprocess.TimeoutExpired):
                tasks = ctr(paths, "tasks", "ls", "--quiet", launcher=launcher).split()
                if tasks:
                    ctr(paths, "tasks", "delete", "--force", *tasks, launcher=launcher)
        kill_shims(paths.socket)
        stop_containerd()
    finally:
        unmount_under(paths.root, launcher)
        remove_log_symlinks(paths)


def namespace_launcher(pid: int) -> Callable[[Sequence[str]], list[str]]:
    """A launcher into the mount namespace of process `pid` (for `dev-down`, which has only pids)."""

    def launch(argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--target={pid}", "--mount", "--", *argv]

    return launch


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
        hosts = {"server": f"https://{host}", "host": {f"https://{host}": {"ca": str(self.ca.cert_path)}}}
        (directory / "hosts.toml").write_text(_toml(hosts))
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
            _toml(containerd_config(paths, runc_wrapper=binaries / "geopin-runc", stream_address=self.node_ip))
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
