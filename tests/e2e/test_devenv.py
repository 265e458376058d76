"""`make dev-up` / `make dev-down` (python -m tests.harness up|down): the local environment contract,
with `.dev/run` and the ACR-shaped names, in a state directory of its own."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import netns, procs
from tests.harness.controlplane import REGION_LABEL, REPO_ROOT
from tests.harness.devenv import recorded_processes
from tests.harness.nodecleanup import mounts_under, shim_pids
from tests.harness.nodeconfig import AKS_WITH_GEO, SANDBOX_IMAGE, NodePaths
from tests.harness.nodes import NODE_IMAGE_LABEL

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.e2e

REGIONS = ("eastus", "westus", "centralus")


def harness(dev_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.harness", "--dir", str(dev_dir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def dev_run(dev_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dev_dir / "run"), *argv], capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT
    )


@pytest.fixture(scope="module")
def dev_dir(short_dir: Callable[[str], Path]) -> Iterator[Path]:
    directory = short_dir("devenv") / ".dev"
    started = harness(directory, "up", "--global-failover-delay", "7")
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield directory
    finally:
        if directory.exists():
            harness(directory, "down")


def test_registries_json_describes_the_acr_shaped_replicas(dev_dir: Path) -> None:
    described = json.loads((dev_dir / "registries.json").read_text())
    assert set(described) == {*REGIONS, "global"}
    for region in REGIONS:
        entry = described[region]
        assert entry["host"] == f"contoso.{region}.geo.azurecr.io"
        assert entry["data_host"] == f"contoso.{region}.data.azurecr.io"
        assert entry["endpoint"] == f"{entry['ip']}:443"
        assert entry["username"] == "contoso"
        assert entry["password"]
        assert procs.pid_alive(entry["pid"])
        assert procs.pid_alive(entry["data_pid"])
    assert described["global"]["host"] == "contoso.azurecr.io"
    assert described["global"]["order"] == list(REGIONS)
    assert described["global"]["failover_delay_seconds"] == 7
    assert (dev_dir / "registries.json").stat().st_mode & 0o077 == 0
    assert all(p.owned() for p in recorded_processes(dev_dir))


def test_probe_through_dev_run_needs_no_endpoint_overrides(dev_dir: Path) -> None:
    probed = dev_run(dev_dir, "geopin", "probe", "contoso.azurecr.io", "--region", "eastus", "--region", "westus")
    assert probed.returncode == 0, probed.stdout + probed.stderr
    lines = probed.stdout.splitlines()
    assert lines[1].split()[:3] == ["eastus", "contoso.eastus.geo.azurecr.io", "ok"]
    assert lines[2].split()[:3] == ["westus", "contoso.westus.geo.azurecr.io", "ok"]
    # Outside the name space the same names do not resolve: the probe fails.
    outside = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "geopin"), "probe", "contoso.azurecr.io", "--region", "eastus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert outside.returncode == 1
    assert "connect" in outside.stdout


def test_dev_run_passes_exit_status_working_directory_and_environment(dev_dir: Path) -> None:
    assert dev_run(dev_dir, "sh", "-c", "exit 7").returncode == 7
    shown = dev_run(
        dev_dir, "sh", "-c", 'pwd; echo "$SSL_CERT_FILE"; echo "$KUBECONFIG"; getent hosts contoso.azurecr.io'
    )
    cwd, bundle, kubeconfig, resolved = shown.stdout.splitlines()
    assert cwd == str(REPO_ROOT)
    assert bundle == str(dev_dir / "ca-bundle.crt")
    assert kubeconfig == str(dev_dir / "kubeconfig")
    global_ip = json.loads((dev_dir / "registries.json").read_text())["global"]["ip"]
    assert resolved.split() == [global_ip, "contoso.azurecr.io"]
    assert (dev_dir / "ca.crt").read_bytes() in (dev_dir / "ca-bundle.crt").read_bytes()
    namespaces = dev_run(dev_dir, "kubectl", "get", "namespaces", "-o", "name")
    assert "namespace/default" in namespaces.stdout.split()


def test_dev_run_refuses_clearly_without_root(dev_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to switch to an unprivileged user", pytrace=False)
    with tempfile.TemporaryDirectory() as directory:
        Path(directory).chmod(0o755)
        script = Path(directory) / "run"
        shutil.copyfile(dev_dir / "run", script)
        script.chmod(0o755)
        refused = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script), "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
        )
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr == ".dev/run: needs root (it enters the environment's namespaces)\n"


def test_nodes_json_lists_a_ready_kubelet_that_runs_pods(dev_dir: Path) -> None:
    listed = json.loads((dev_dir / "nodes.json").read_text())
    assert [(n["name"], n["region"]) for n in listed] == [("aks-nodepool1-0", "eastus")]
    assert procs.pid_cmdline(listed[0]["pid"])[0].endswith("/kubelet")
    shown = dev_run(dev_dir, "kubectl", "get", "node", "aks-nodepool1-0", "-o", "json")
    node = json.loads(shown.stdout)
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert node["metadata"]["labels"][REGION_LABEL] == "eastus"
    assert node["metadata"]["labels"][NODE_IMAGE_LABEL] == AKS_WITH_GEO.node_image_version
    # Its own address (198.18.0.0/15): the Node's InternalIP, and so its hostNetwork Pods' IP. It exists
    # in the environment's network only: the host's is untouched.
    assert ipaddress.ip_address(listed[0]["ip"]) in netns.NETWORK
    holder = int((dev_dir / "namespace.pid").read_text())
    with netns.inside(holder):
        assert listed[0]["ip"] in netns.on_host()
    assert listed[0]["ip"] not in netns.on_host()
    assert {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"] == listed[0]["ip"]
    # The sandbox image is on the node already: a Pod runs without a registry, and leaves mounts behind
    # for `down` to clean (its rootfs, its sandbox's shm, its service-account token volume).
    overrides = json.dumps({"spec": {"hostNetwork": True}})
    started = dev_run(
        dev_dir,
        "kubectl",
        "run",
        "idle",
        f"--image={SANDBOX_IMAGE}",
        "--image-pull-policy=Never",
        f"--overrides={overrides}",
    )
    assert started.returncode == 0, started.stderr
    ready = dev_run(dev_dir, "kubectl", "wait", "--for=condition=Ready", "pod/idle", "--timeout=60s")
    assert ready.returncode == 0, ready.stderr
    assert len(mounts_under(dev_dir)) == 0  # the node's mounts live in the name space only
    assert len(findmnt_inside(dev_dir)) >= 3


def findmnt_inside(dev_dir: Path) -> list[str]:
    shown = dev_run(dev_dir, "findmnt", "--list", "--noheadings", "--output", "TARGET")
    return [line for line in shown.stdout.splitlines() if line.startswith(str(dev_dir.resolve()))]


def test_down_stops_everything_and_removes_the_directory(dev_dir: Path) -> None:
    node_dirs = [Path(n["dir"]) for n in json.loads((dev_dir / "nodes.json").read_text())]
    node_ips = [n["ip"] for n in json.loads((dev_dir / "nodes.json").read_text())]
    recorded = recorded_processes(dev_dir)
    assert {p.name for p in recorded} >= {"etcd", "kube-apiserver", "hosts-namespace", "global-endpoint"}
    assert {p.name for p in recorded} >= {"aks-nodepool1-0-kubelet", "aks-nodepool1-0-containerd"}
    assert shim_pids(NodePaths(node_dirs[0]).socket)
    stopped = harness(dev_dir, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not dev_dir.exists()
    assert not any(procs.pid_alive(p.pid) and p.owned() for p in recorded)
    # Nothing of the node is left: no shim, no container, no mount.
    assert shim_pids(NodePaths(node_dirs[0]).socket) == []
    assert mounts_under(dev_dir) == []
    assert not set(node_ips) & netns.on_host()  # never on the host
