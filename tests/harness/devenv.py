"""The local environment contract: `up` starts a detached control plane and ACR-shaped replicas and
describes them in `.dev/`; `down` stops what `.dev/` lists and removes it (see docs/testing.md).

.dev/
  kubeconfig        admin kubeconfig (system:masters)
  ca.crt            the run's CA: trusts the apiserver and every registry
  ca-bundle.crt     the system's CAs plus the run's CA (SSL_CERT_FILE under .dev/run)
  registries.json   {"eastus": {"endpoint": "IP:443", "host": "contoso.eastus.geo.azurecr.io", "ip",
                    "pid", "data_host", "data_ip", "data_pid", "username", "password"}, ...,
                    "global": {"endpoint", "host": "contoso.azurecr.io", "ip", "pid", "order",
                    "failover_delay_seconds", "state", "username", "password"}}
  run               `.dev/run CMD ARGS...`: CMD in the environment's mount namespace (the names) and
                    network namespace (every address above), the run's CA trusted
  namespace.pid     the name space's holder process
  nodes.json        [{"name", "region", "pid" (the kubelet), "containerd_pid", "dir", "ip"}]: each Ready at
                    `up`; "ip" is its address (198.18.0.0/15) in the environment's own network
  hosts             the /etc/hosts seen inside it
  pids              one pid per line, everything `up` started
  processes.json    [{"name", "pid", "argv0"}]: lets `down` skip pids the kernel has reused
  logs/             one log per process
  controlplane/ acr/ nodes/ fixed/ pki/   working state
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness import netns, procs
from tests.harness.acr import AcrRegistrySet
from tests.harness.controlplane import REPO_ROOT, ControlPlane, find_binaries
from tests.harness.globalrouter import DEFAULT_FAILOVER_DELAY
from tests.harness.names import require_root
from tests.harness.nodecleanup import direct, kill_shims, namespace_launcher, teardown
from tests.harness.nodeconfig import NodePaths
from tests.harness.nodeenv import NodeEnvironment
from tests.harness.nodes import find_node_binaries
from tests.harness.pki import CA
from tests.harness.registries import DEFAULT_REGIONS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

DEFAULT_DEV_DIR = REPO_ROOT / ".dev"
# `down` stops by rank: everything else first, then the apiserver, etcd, and the name space last.
STOP_RANKS = {"kube-apiserver": 1, "etcd": 2, "hosts-namespace": 3}

RUN_SCRIPT = """#!/bin/sh
# Written by `make dev-up`. .dev/run CMD ARGS... runs CMD where the environment's names resolve (its
# private mount namespace: contoso.azurecr.io, contoso.<region>.geo.azurecr.io, ...), in its own
# network namespace (where its addresses are), with its CA trusted (SSL_CERT_FILE, REQUESTS_CA_BUNDLE);
# KUBECONFIG is the environment's. Exit status: CMD's.
dev=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then
  echo ".dev/run: needs root (it enters the environment's namespaces)" >&2; exit 2
fi
if [ $# -eq 0 ]; then echo "usage: .dev/run CMD [ARGS...]" >&2; exit 2; fi
pid=$(cat "$dev/namespace.pid" 2>/dev/null || true)
inside=$(readlink "/proc/${pid:-0}/ns/mnt" 2>/dev/null || true)
if [ -z "$pid" ] || [ -z "$inside" ] || [ "$inside" = "$(readlink /proc/self/ns/mnt)" ]; then
  echo ".dev/run: the environment's name space is not running: make dev-down && make dev-up" >&2; exit 2
fi
export SSL_CERT_FILE="$dev/ca-bundle.crt" REQUESTS_CA_BUNDLE="$dev/ca-bundle.crt" KUBECONFIG="$dev/kubeconfig"
export PATH="{path}:$PATH"
exec nsenter --target "$pid" --mount --net --wd="$PWD" -- "$@"
"""


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
    global_failover_delay: float = DEFAULT_FAILOVER_DELAY,
    nodes: int = 1,
) -> None:
    """Start everything detached. With `nodes` > 0, that many real nodes (containerd + kubelet) in
    `node_regions` (cycled) and kube-scheduler; with 0, fake Node objects in `node_regions`."""
    require_root("make dev-up")
    if dev_dir.exists():
        alive = [p for p in recorded_processes(dev_dir) if p.owned()]
        if alive:
            names = ", ".join(f"{p.name}={p.pid}" for p in alive)
            raise DevEnvError(f"{dev_dir} exists and its processes are running ({names}); run `down` first")
        print(f"{dev_dir} is stale (nothing running): removing it", file=sys.stderr)
        for node_dir in recorded_node_dirs(dev_dir):
            kill_shims(NodePaths(node_dir).socket)  # they outlive containerd, and hold its mounts
        shutil.rmtree(dev_dir)
    began = time.monotonic()
    logs = dev_dir / "logs"
    logs.mkdir(parents=True)
    ca = CA(dev_dir / "pki")
    binaries = find_binaries()  # may build, from the Go module proxy: before the network is left behind
    if nodes > 0:
        find_node_binaries()
    # Everything from here on runs in the environment's own network (tests/harness/netns.py).
    node_addresses = netns.addresses(nodes)
    netns.unshare_network(node_addresses)
    control_plane = ControlPlane(
        node_regions=node_regions if nodes == 0 else (),
        extra_apiserver_args=extra_apiserver_args,
        ca=ca,
        workdir=dev_dir / "controlplane",
        log_dir=logs,
        binaries=binaries,
        detach=True,
        with_nodes=nodes > 0,
    )
    registries = AcrRegistrySet(
        ca, regions, workdir=dev_dir / "acr", log_dir=logs, detach=True, global_failover_delay=global_failover_delay
    )
    node_env = NodeEnvironment(
        ca,
        registries,
        workdir=dev_dir,
        node_regions=[node_regions[i % len(node_regions)] for i in range(nodes)],
        log_dir=logs,
        detach=True,
        control_plane=control_plane,
        node_addresses=node_addresses,
    )
    try:
        registries.start()
        # The control plane, then the nodes (in the replicas' name space).
        node_env.start()
        shutil.copyfile(ca.cert_path, dev_dir / "ca.crt")
        shutil.copyfile(registries.ca_bundle, dev_dir / "ca-bundle.crt")
        shutil.copyfile(control_plane.kubeconfig, dev_dir / "kubeconfig")
        (dev_dir / "kubeconfig").chmod(0o600)
        (dev_dir / "registries.json").write_text(json.dumps(registries.describe(), indent=2) + "\n")
        (dev_dir / "registries.json").chmod(0o600)  # it holds the replicas' password
        (dev_dir / "hosts").symlink_to(registries.namespace.hosts_path)
        (dev_dir / "namespace.pid").write_text(f"{registries.namespace.pid}\n")
        write_run_script(dev_dir / "run", [REPO_ROOT / ".venv" / "bin", binaries])
        node_processes = [p for node in node_env.nodes.values() for p in node.processes]
        record_processes(dev_dir, [*control_plane.processes, *node_processes, *registries.processes])
        (dev_dir / "nodes.json").write_text(
            json.dumps(
                [
                    {
                        "name": node.name,
                        "region": node.region,
                        "pid": node.kubelet_pid,
                        "containerd_pid": node.containerd_pid,
                        "dir": str(node.paths.root),
                        "ip": node.node_ip,
                    }
                    for node in node_env.nodes.values()
                ],
                indent=2,
            )
            + "\n"
        )
    except BaseException:
        node_env.close()
        registries.close()
        shutil.rmtree(dev_dir, ignore_errors=True)
        raise
    print(f"dev environment up in {time.monotonic() - began:.1f}s")
    print(f"  export KUBECONFIG={dev_dir / 'kubeconfig'}")
    print(f"  CA: {dev_dir / 'ca.crt'}")
    for name, registry in registries.items():
        print(f"  registry {name}: {registry.host} ({registry.address}), blobs via {registry.data_host}")
    delay = registries.global_endpoint.failover_delay
    print(f"  global endpoint: {registries.login_server} (emulated; fails over after {delay:g}s)")
    print(f"  credentials: {registries.auth[0]} / (password in {dev_dir / 'registries.json'})")
    print(f"  names resolve inside: {dev_dir / 'run'} CMD ARGS...")
    for node in node_env.nodes.values():
        print(
            f"  node {node.name} ({node.region}, {node.node_image_version}, {node.node_ip}): "
            f"Ready in {node.ready_seconds:.1f}s"
        )


def holder_pid(dev_dir: Path) -> int:
    """The name space holder's pid: its mount namespace has the names, its network namespace the addresses."""
    try:
        pid = int((dev_dir / "namespace.pid").read_text())
    except (OSError, ValueError):
        raise DevEnvError(f"{dev_dir} has no running environment: make dev-up") from None
    if not procs.pid_alive(pid):
        raise DevEnvError(f"the environment's name space holder ({pid}) is gone: make dev-down && make dev-up")
    return pid


def write_run_script(path: Path, path_dirs: Iterable[Path]) -> None:
    path.write_text(RUN_SCRIPT.replace("{path}", ":".join(str(d) for d in path_dirs)))
    path.chmod(0o755)


def record_processes(dev_dir: Path, started: Iterable[procs.Process]) -> None:
    """processes.json and pids; argv0 is what /proc shows now (the name space holder has exec'd sleep)."""
    entries = []
    for process in started:
        cmdline = procs.pid_cmdline(process.pid)
        entries.append({"name": process.name, "pid": process.pid, "argv0": cmdline[0] if cmdline else process.argv[0]})
    (dev_dir / "processes.json").write_text(json.dumps(entries, indent=2) + "\n")
    (dev_dir / "pids").write_text("".join(f"{entry['pid']}\n" for entry in entries))


def down(dev_dir: Path = DEFAULT_DEV_DIR) -> None:
    if not dev_dir.exists():
        print(f"{dev_dir} does not exist: nothing to stop")
        return
    recorded = recorded_processes(dev_dir)
    owned = {p.pid for p in recorded if p.owned()}
    stop_nodes(dev_dir, recorded, owned)
    for rank in sorted({0, *STOP_RANKS.values()}):
        pids = [p.pid for p in recorded if p.pid in owned and STOP_RANKS.get(p.name, 0) == rank]
        procs.terminate_pids(pids, timeout=10.0, owned=lambda pid: pid in owned)
    shutil.rmtree(dev_dir)
    print(f"stopped {len(owned)} processes and removed {dev_dir}")


def recorded_node_dirs(dev_dir: Path) -> list[Path]:
    listing = dev_dir / "nodes.json"
    return [Path(entry["dir"]) for entry in json.loads(listing.read_text())] if listing.exists() else []


def stop_nodes(dev_dir: Path, recorded: Sequence[Recorded], owned: set[int]) -> None:
    """Each node in nodes.json: kubelet, pods, containerd, then whatever is still mounted under it."""
    listing = dev_dir / "nodes.json"
    if not listing.exists():
        return
    holder = next((p.pid for p in recorded if p.name == "hosts-namespace" and p.pid in owned), None)

    def stopper(pid: int) -> Callable[[], None]:
        return lambda: procs.terminate_pids([pid], timeout=10.0, owned=lambda p: p in owned)

    def running(pid: int) -> Callable[[], bool]:
        return lambda: pid in owned and procs.pid_alive(pid)

    for entry in json.loads(listing.read_text()):
        containerd = entry["containerd_pid"]
        teardown(
            NodePaths(Path(entry["dir"])),
            stop_kubelet=stopper(entry["pid"]),
            containerd_alive=running(containerd),
            stop_containerd=stopper(containerd),
            launcher=functools.partial(_in_namespace, [holder, containerd if containerd in owned else None]),
        )


def _in_namespace(members: Sequence[int | None], argv: Sequence[str]) -> list[str]:
    """argv run in the mount namespace of the first live process of `members`. With none left the
    namespace is gone, and its mounts with it: argv runs as it is."""
    for pid in members:
        if pid is not None and procs.pid_alive(pid):
            return namespace_launcher(pid)(argv)
    return direct(argv)


def status(dev_dir: Path = DEFAULT_DEV_DIR) -> bool:
    """Print each recorded process and whether it runs; True if all do."""
    if not dev_dir.exists():
        print(f"{dev_dir} does not exist: the dev environment is down")
        return False
    recorded = recorded_processes(dev_dir)
    for p in recorded:
        print(f"  {p.name:<40} pid {p.pid:<8} {'running' if p.owned() else 'NOT RUNNING'}")
    if (dev_dir / "registries.json").exists():
        for name, entry in json.loads((dev_dir / "registries.json").read_text()).items():
            print(f"  registry {name}: {entry.get('host', '')} ({entry['endpoint']})")
    if (dev_dir / "nodes.json").exists():
        for entry in json.loads((dev_dir / "nodes.json").read_text()):
            print(f"  node {entry['name']} ({entry['region']}): kubelet pid {entry['pid']}")
    print(f"  KUBECONFIG={dev_dir / 'kubeconfig'}")
    return bool(recorded) and all(p.owned() for p in recorded)


def dev_dir_from_env() -> Path:
    return Path(os.environ.get("GEOPIN_DEV_DIR", str(DEFAULT_DEV_DIR)))
