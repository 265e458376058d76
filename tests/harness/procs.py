"""Starting and stopping the harness's child processes, attached (tests) or detached (`up`)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL this child when the parent dies, so a crashed
    # pytest run leaves no etcd or registry behind. Only a pre-resolved libc call; no Python locks.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    """One started child: its name, command line and log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    detach: bool,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Process:
    """Start `argv` with stdout and stderr appended to `log_path`.

    Attached children die with this process (PR_SET_PDEATHSIG); detached ones get their own session
    and outlive it (`python -m tests.harness up`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=detach,
            preexec_fn=None if detach else _die_with_parent,
        )
    return Process(name=name, argv=list(argv), log_path=log_path, popen=popen)


def terminate(processes: Iterable[Process], timeout: float = 10.0) -> None:
    """SIGTERM every live process (SIGCONT too, in case it is paused), SIGKILL what is left at the deadline."""
    live = [p for p in processes if p.alive()]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.popen.send_signal(signal.SIGTERM)
            p.popen.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + timeout
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in live:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.kill()
            p.popen.wait()


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (works for processes that are not our children)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def terminate_pids(pids: Iterable[int], timeout: float = 10.0, owned: Callable[[int], bool] | None = None) -> None:
    """`terminate` for processes known only by pid; `owned(pid)` guards against recycled pids."""
    live = [pid for pid in pids if pid_alive(pid) and (owned is None or owned(pid))]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in live:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(pid_alive(pid) for pid in live) and time.monotonic() < deadline:
        time.sleep(0.05)
