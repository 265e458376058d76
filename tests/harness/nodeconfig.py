"""What a local node's files say: the paths under its directory, containerd's configuration, the
kubelet's configuration, and AKS's kubelet credential provider lists (hack/node/credential-provider/).
Pure: nothing here starts or touches anything."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.harness.controlplane import REPO_ROOT

if TYPE_CHECKING:
    from tests.harness.pki import CA

HACK_NODE = REPO_ROOT / "hack" / "node"
# The sandbox ("pause") image: imported, never pulled, so any name works; this one cannot be pulled.
SANDBOX_IMAGE = "geopin.local/pause:1"
BARE_TOML_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


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


class NodePaths:
    """Every path a node uses, derived from its directory (so `dev-down` can find them again)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"  # containerd's API: the kubelet's runtime endpoint
        self.containerd = root / "containerd"  # its root, state and opt directories
        self.containerd_config = root / "containerd.toml"
        self.runc_root = root / "containerd" / "runc"
        self.certs_d = root / "certs.d"  # <host>/hosts.toml
        self.cni = root / "cni"  # net.d/ with the loopback-only configuration, bin/ empty
        self.kubelet_root = root / "kubelet"
        self.kubelet_config = root / "kubelet.yaml"
        self.kubelet_kubeconfig = root / "kubelet.kubeconfig"
        self.pod_logs = root / "pod-logs"
        self.credential_provider = root / "credential-provider"  # config.yaml, bin/, credentials.json
        self.credentials = self.credential_provider / "credentials.json"


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


def render_toml(document: Mapping[str, Any], table: str = "") -> str:
    """A small TOML writer for nested tables of strings, numbers, booleans and lists."""
    lines = [f"{key} = {_toml_value(v)}" for key, v in document.items() if not isinstance(v, Mapping)]
    text = (f"[{table}]\n" if table and lines else "") + "".join(f"{line}\n" for line in lines)
    for key, value in document.items():
        if isinstance(value, Mapping):
            name = key if BARE_TOML_KEY.match(key) else json.dumps(key)
            text += "\n" + render_toml(value, f"{table}.{name}" if table else name)
    return text


def hosts_toml(host: str, ca: Path) -> dict[str, Any]:
    """containerd's `certs.d/<host>/hosts.toml` for a registry `host` ("name" or "name:port") that
    serves TLS from `ca`."""
    return {"server": f"https://{host}", "host": {f"https://{host}": {"ca": str(ca)}}}


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
