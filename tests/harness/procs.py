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
from typing import TYPE_CHECKING, Literal, Protocol, Self

import httpx

from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from types import TracebackType

State = Literal["running", "paused", "stopped"]

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


class Service:
    """`with` support for the harness's services: `start()` on entry, `close()` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Closable(Protocol):
    def close(self) -> None: ...


def close_all(parts: Iterable[Closable]) -> None:
    """Close every part, even if closing one fails (the first error is re-raised at the end)."""
    errors: list[Exception] = []
    for part in parts:
        try:
            part.close()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


def wait_serving(
    process: Process | None,
    answers: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    error: type[Exception] = RuntimeError,
) -> None:
    """Poll `answers()` until it is true; a transport error counts as "not yet", an exited process fails."""

    def ready() -> bool:
        if process is None or not process.alive():
            tail = process.log_tail() if process else ""
            raise error(f"{what} exited; last log lines:\n{tail}")
        try:
            return answers()
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=timeout, interval=0.05, what=what)


class Faultable(Service):
    """A service that is one child process, with real faults: `stop()` is SIGKILL (connections refused),
    `pause()` SIGSTOP (connections hang), `resume()` SIGCONT; `restart()` and `heal()` undo them.
    Subclasses set `process` when they start, `label` (for errors) and `error` (the exception type)."""

    label = "process"
    error: type[Exception] = RuntimeError
    process: Process | None = None
    _paused = False

    def start(self, *, wait: bool = True) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        if self.process is None:
            raise self.error(f"{self.label} was never started")
        return self.process.pid

    @property
    def state(self) -> State:
        if self.process is None or not self.process.alive():
            return "stopped"
        return "paused" if self._paused else "running"

    def stop(self) -> None:
        """SIGKILL: the port stops listening, clients get connection refused."""
        if self.process is not None and self.process.alive():
            self.process.popen.kill()
            self.process.popen.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers, clients time out."""
        self.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Kill (if running or paused) and start again."""
        self.stop()
        self.start()

    def heal(self) -> None:
        """Whatever state a test left it in, make it serve again."""
        if self.state == "paused":
            self.resume()
        if self.state == "stopped":
            self.start()

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is None or not self.process.alive():
            raise self.error(f"{self.label} is not running")
        self.process.popen.send_signal(sig)
