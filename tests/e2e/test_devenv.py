"""`make dev-up` / `make dev-down` (python -m tests.harness up|down): the local environment contract,
with `.dev/run` and the ACR-shaped names, in a state directory of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import procs
from tests.harness.controlplane import REPO_ROOT
from tests.harness.devenv import recorded_processes

if TYPE_CHECKING:
    from collections.abc import Iterator

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
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("devenv") / ".dev"
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
    assert refused.stderr == ".dev/run: needs root (it enters the environment's mount namespace)\n"


def test_down_stops_everything_and_removes_the_directory(dev_dir: Path) -> None:
    recorded = recorded_processes(dev_dir)
    assert {p.name for p in recorded} >= {"etcd", "kube-apiserver", "hosts-namespace", "global-endpoint"}
    stopped = harness(dev_dir, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not dev_dir.exists()
    assert not any(procs.pid_alive(p.pid) and p.owned() for p in recorded)
