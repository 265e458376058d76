"""The local environment contract: `up` starts a detached control plane and replicas and describes
them in `.dev/`; `down` stops what `.dev/` lists and removes it (see docs/architecture.md).

.dev/
  kubeconfig        admin kubeconfig (system:masters)
  ca.crt            the run's CA: trusts the apiserver and every registry
  registries.json   {"eastus": {"endpoint": "127.0.0.1:PORT", "pid": N}, ...}
  pids              one pid per line, everything `up` started
  processes.json    [{"name", "pid", "argv0"}]: lets `down` skip pids the kernel has reused
  logs/             one log per process
  controlplane/ registries/ pki/   working state
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness import procs
from tests.harness.controlplane import REPO_ROOT, ControlPlane
from tests.harness.pki import CA
from tests.harness.registries import DEFAULT_REGIONS, RegistrySet

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_DEV_DIR = REPO_ROOT / ".dev"


class DevEnvError(RuntimeError):
    pass


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    argv0: str

    def owned(self) -> bool:
        """Still our process: alive and running the binary we started (not a reused pid)."""
        cmdline = procs.pid_cmdline(self.pid)
        return procs.pid_alive(self.pid) and bool(cmdline) and cmdline[0] == self.argv0


def recorded_processes(dev_dir: Path) -> list[Recorded]:
    listing = dev_dir / "processes.json"
    if listing.exists():
        return [Recorded(**entry) for entry in json.loads(listing.read_text())]
    pids = dev_dir / "pids"
    if pids.exists():  # written by hand or by an older harness: nothing to check the argv against
        recorded = []
        for word in pids.read_text().split():
            if word.isdigit():
                cmdline = procs.pid_cmdline(int(word))
                recorded.append(Recorded("unknown", int(word), cmdline[0] if cmdline else ""))
        return recorded
    return []


def up(
    dev_dir: Path = DEFAULT_DEV_DIR,
    *,
    regions: Sequence[str] = DEFAULT_REGIONS,
    node_regions: Sequence[str] = ("eastus", "eastus", "eastus"),
    extra_apiserver_args: Sequence[str] = (),
) -> None:
    if dev_dir.exists():
        alive = [p for p in recorded_processes(dev_dir) if p.owned()]
        if alive:
            names = ", ".join(f"{p.name}={p.pid}" for p in alive)
            raise DevEnvError(f"{dev_dir} exists and its processes are running ({names}); run `down` first")
        print(f"{dev_dir} is stale (nothing running): removing it", file=sys.stderr)
        shutil.rmtree(dev_dir)
    began = time.monotonic()
    logs = dev_dir / "logs"
    logs.mkdir(parents=True)
    ca = CA(dev_dir / "pki")
    control_plane = ControlPlane(
        node_regions=node_regions,
        extra_apiserver_args=extra_apiserver_args,
        ca=ca,
        workdir=dev_dir / "controlplane",
        log_dir=logs,
        detach=True,
    )
    registries = RegistrySet(ca, regions, workdir=dev_dir / "registries", log_dir=logs, detach=True)
    try:
        control_plane.start()
        registries.start()
        shutil.copyfile(ca.cert_path, dev_dir / "ca.crt")
        shutil.copyfile(control_plane.kubeconfig, dev_dir / "kubeconfig")
        (dev_dir / "kubeconfig").chmod(0o600)
        (dev_dir / "registries.json").write_text(
            json.dumps({name: {"endpoint": r.endpoint, "pid": r.pid} for name, r in registries.items()}, indent=2)
            + "\n"
        )
        started = [*control_plane.processes, *(r.process for r in registries.values() if r.process)]
        (dev_dir / "processes.json").write_text(
            json.dumps([{"name": p.name, "pid": p.pid, "argv0": p.argv[0]} for p in started], indent=2) + "\n"
        )
        (dev_dir / "pids").write_text("".join(f"{p.pid}\n" for p in started))
    except BaseException:
        registries.close()
        control_plane.stop()
        shutil.rmtree(dev_dir, ignore_errors=True)
        raise
    print(f"dev environment up in {time.monotonic() - began:.1f}s")
    print(f"  export KUBECONFIG={dev_dir / 'kubeconfig'}")
    print(f"  CA: {dev_dir / 'ca.crt'}")
    for name, registry in registries.items():
        print(f"  registry {name}: {registry.endpoint}")


def down(dev_dir: Path = DEFAULT_DEV_DIR) -> None:
    if not dev_dir.exists():
        print(f"{dev_dir} does not exist: nothing to stop")
        return
    recorded = recorded_processes(dev_dir)
    owned = {p.pid for p in recorded if p.owned()}
    # Registries and the controller manager first, the apiserver next, etcd last.
    ranks = {"kube-apiserver": 1, "etcd": 2}
    for rank in (0, 1, 2):
        pids = [p.pid for p in recorded if p.pid in owned and ranks.get(p.name, 0) == rank]
        procs.terminate_pids(pids, timeout=10.0, owned=lambda pid: pid in owned)
    shutil.rmtree(dev_dir)
    print(f"stopped {len(owned)} processes and removed {dev_dir}")


def status(dev_dir: Path = DEFAULT_DEV_DIR) -> bool:
    """Print each recorded process and whether it runs; True if all do."""
    if not dev_dir.exists():
        print(f"{dev_dir} does not exist: the dev environment is down")
        return False
    recorded = recorded_processes(dev_dir)
    for p in recorded:
        print(f"  {p.name:<26} pid {p.pid:<8} {'running' if p.owned() else 'NOT RUNNING'}")
    if (dev_dir / "registries.json").exists():
        for name, entry in json.loads((dev_dir / "registries.json").read_text()).items():
            print(f"  registry {name}: {entry['endpoint']}")
    print(f"  KUBECONFIG={dev_dir / 'kubeconfig'}")
    return bool(recorded) and all(p.owned() for p in recorded)


def dev_dir_from_env() -> Path:
    return Path(os.environ.get("GEOPIN_DEV_DIR", str(DEFAULT_DEV_DIR)))
