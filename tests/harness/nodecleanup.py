"""Leaving nothing behind when a node stops: its shims and their containers (found by containerd's
socket in their command line), its mounts (read from mountinfo where they live, usually the
environment's name space), the kubelet's log links, in the order `teardown()` runs them.

A launcher turns an argv into one that runs where the node runs: `direct` (as it is), or
`namespace_launcher(pid)` (nsenter into the mount namespace of a process there)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness import procs
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.harness.nodeconfig import NodePaths

CONTAINER_NAMESPACE = "k8s.io"


class NodeError(RuntimeError):
    pass


def direct(argv: Sequence[str]) -> list[str]:
    """The default launcher: run argv as it is. A launcher returns the argv that runs `argv` where
    the environment's names resolve (e.g. prefixed with nsenter into its mount namespace)."""
    return list(argv)


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
