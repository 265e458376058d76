"""Run the real operator (`geopin run`) as a child process against the local control plane."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from kubernetes import client

from tests.harness import procs
from tests.harness.controlplane import _kubeconfig
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from tests.harness.acr import AcrRegistrySet
    from tests.harness.controlplane import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "deploy" / "crds" / "registrypolicies.geopin.io.yaml"
OPERATOR_USER = "geopin-operator"


def write_kubeconfig(control_plane: ControlPlane, user: str, groups: tuple[str, ...], path: Path) -> Path:
    """A kubeconfig for a client-certificate user of the control plane's CA (its own audit identity)."""
    cert = control_plane.ca.issue_client(user.replace(":", "-"), user, groups)
    path.write_text(yaml.safe_dump(_kubeconfig(control_plane.url, control_plane.ca, user, cert)))
    return path


def install_crd(control_plane: ControlPlane) -> None:
    """Create (or replace) the RegistryPolicy CRD and wait until it is Established."""
    body = yaml.safe_load(CRD_PATH.read_text())
    with control_plane.api_client() as api:
        extensions: Any = client.ApiextensionsV1Api(api)
        try:
            extensions.create_custom_resource_definition(body)
        except client.ApiException as e:
            if e.status != 409:
                raise
            current = extensions.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(body["metadata"]["name"], body)

        def established() -> bool:
            crd = extensions.read_custom_resource_definition(body["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_until(established, timeout=30, what="RegistryPolicy CRD established")


class Operator:
    """One `geopin run` process with its own kubeconfig identity, metrics and health ports."""

    def __init__(
        self,
        control_plane: ControlPlane,
        workdir: Path,
        *,
        user: str = OPERATOR_USER,
        verbose: bool = False,
        env: dict[str, str] | None = None,
        groups: tuple[str, ...] = ("system:masters",),
        names: AcrRegistrySet | None = None,
    ) -> None:
        """``env``: extra environment variables for every start (they override the inherited ones).
        ``groups``: the user's groups (the default bypasses RBAC).
        ``names``: run inside that set's name space, trusting its CA, as `.dev/run` does."""
        self.names = names
        self.verbose = verbose
        self.env = dict(env or {})
        self.control_plane = control_plane
        self.workdir = workdir
        self.user = user
        self.kubeconfig = write_kubeconfig(control_plane, user, groups, workdir / f"{user}.kubeconfig")
        self.metrics_port = procs.free_port()
        self.health_port = procs.free_port()
        self.log_path = workdir / f"{user}.log"
        self.process: procs.Process | None = None
        self._extra: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """The pod-name part of its leader-election identity ($HOSTNAME, as in a Pod)."""
        return self.env.get("HOSTNAME", "")

    def start(self, *extra: str) -> None:
        self.spawn(*extra)
        self.wait_started()

    def spawn(self, *extra: str) -> None:
        """Start the process and return at once: wait_started() waits for it to be healthy, so that
        several geopins can start side by side."""
        self._extra = extra
        argv = [
            sys.executable, "-m", "geopin.cli", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--operator-namespace", "geopin-system",
            *(["--verbose"] if self.verbose else []),
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.names is not None:
            argv = self.names.command(argv)
            env = self.names.env(env)
        self.process = procs.spawn("geopin", argv, self.log_path, detach=False, env=env)

    def wait_started(self) -> None:
        # A generous deadline: on two loaded cores (the soak smoke beside the image build) a start took
        # over 30 s once, and a process that exits fails at once (_healthy raises with its log).
        wait_until(
            self._healthy, timeout=90, what=f"geopin health endpoint :{self.health_port}", ignore=(httpx.HTTPError,)
        )

    def _healthy(self) -> bool:
        if self.process is None or not self.process.alive():
            raise AssertionError(f"geopin exited:\n{self.process.log_tail() if self.process else ''}")
        return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.process is not None:
            procs.terminate([self.process], timeout=15)

    def restart(self) -> None:
        """Stop (SIGTERM, as a Pod is deleted) and start again with the same arguments."""
        self.stop()
        self.start(*self._extra)

    def kill(self) -> None:
        if self.process is not None and self.process.alive():
            self.process.popen.send_signal(signal.SIGKILL)
            self.process.popen.wait()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (its event loop, its threads, its Lease renewals) until resume()."""
        if self.process is not None and self.process.alive():
            self.process.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.alive():
            self.process.popen.send_signal(signal.SIGCONT)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample, or None when absent."""
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            sample, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
        return None

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
