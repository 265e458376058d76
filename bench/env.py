"""The shared benchmark environment: a real control plane, three registry replicas and `geopin run`.

Everything here is the harness of the end-to-end tests (tests/harness), started in one place so each
benchmark gets a fresh, isolated environment and cleans it up whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from kubernetes import client
from tests.harness.controlplane import ControlPlane
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.pki import CA
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
REGISTRY = "contoso.azurecr.io"
OTHER_IMAGES = ("docker.io/library/nginx:1.27", "quay.io/prometheus/node-exporter:v1.8.2")
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
POLICY = "bench"
HOME, NEXT = "eastus", "westus"
CREATE_THREADS = 8
_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def say(message: str) -> None:
    """Progress on stderr with a wall-clock stamp (stdout carries the tables)."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def original_image(i: int) -> str:
    return f"{REGISTRY}/fleet/app-{i}:1.{i}"


def deployment_body(name: str, image: str) -> dict[str, Any]:
    return deployment(name, image, labels={"app": name})


def log_time(line: str) -> float | None:
    """The wall time of an operator log line (`YYYY-MM-DD HH:MM:SS,mmm ...`, local time), if it has one."""
    match = _LOG_STAMP.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def audit_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Patch:
    """One successful PATCH from the audit log: who, which object, received and completed (epoch s)."""

    user: str
    namespace: str
    name: str
    received: float
    completed: float


class BenchEnv:
    """ControlPlane + RegistrySet + Operator (not started: `start_operator`) in a temp dir."""

    def __init__(self, *, verbose_operator: bool = False, controller_qps: int | None = None) -> None:
        """``controller_qps``: raise kube-controller-manager's client rate limit (default 20/s), so that
        it catches up with thousands of template changes in a minute rather than in many."""
        self.workdir = Path(tempfile.mkdtemp(prefix="geopin-bench-"))
        self.verbose_operator = verbose_operator
        self.controller_args = (
            [f"--kube-api-qps={controller_qps}", f"--kube-api-burst={2 * controller_qps}"] if controller_qps else []
        )
        self._stack = contextlib.ExitStack()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self.cp: ControlPlane
        self.registries: RegistrySet
        self.operator: Operator
        self.ca: CA

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        try:
            say("starting the control plane and three registry replicas")
            self.ca = CA(self.workdir / "pki")
            self.cp = self._stack.enter_context(
                ControlPlane(
                    ca=self.ca, workdir=self.workdir / "cp", extra_controller_manager_args=self.controller_args
                )
            )
            self.registries = self._stack.enter_context(RegistrySet(self.ca, workdir=self.workdir / "registries"))
            install_crd(self.cp)
            self.operator = Operator(self.cp, self.workdir, verbose=self.verbose_operator)
            self._stack.callback(self.operator.stop)
            self.api: Any = self._stack.enter_context(self.cp.api_client())
            self.apps: Any = client.AppsV1Api(self.api)
            self.core: Any = client.CoreV1Api(self.api)
            self.custom: Any = client.CustomObjectsApi(self.api)
            self.http = self._stack.enter_context(
                httpx.Client(base_url=self.cp.url, verify=self.ca.ssl_context(self.cp.admin), timeout=60.0)
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            if os.environ.get("BENCH_KEEP_WORKDIR"):
                say(f"kept {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def start_operator(self, *extra: str) -> None:
        began = time.monotonic()
        self.operator.start(*extra)
        say(f"geopin run started (pid {self.pid}) in {time.monotonic() - began:.1f}s")

    @property
    def pid(self) -> int:
        if self.operator.process is None:
            raise RuntimeError("the operator is not running")
        return self.operator.process.pid

    # -- objects ---------------------------------------------------------------------------------

    def endpoints(self) -> dict[str, str]:
        return {region: self.registries[region].endpoint for region in self.registries}

    def create_namespaces(self, names: Iterable[str]) -> None:
        for name in names:
            self.core.create_namespace({"metadata": {"name": name}})

    def _thread_apps(self) -> Any:
        apps = getattr(self._local, "apps", None)
        if apps is None:
            api = self.cp.api_client()
            with self._clients_lock:
                self._clients.append(api)
            apps = self._local.apps = client.AppsV1Api(api)
        return apps

    def create_deployments(self, items: Sequence[tuple[str, str, str]]) -> float:
        """Create (namespace, name, image) Deployments with 8 threads; returns the seconds it took."""
        began = time.monotonic()
        done = 0
        lock = threading.Lock()
        step = max(1, len(items) // 10)

        def create(item: tuple[str, str, str]) -> None:
            nonlocal done
            namespace, name, image = item
            self._thread_apps().create_namespaced_deployment(namespace, deployment_body(name, image))
            with lock:
                done += 1
                if done % step == 0 or done == len(items):
                    rate = done / max(time.monotonic() - began, 1e-9)
                    say(f"  created {done}/{len(items)} Deployments ({rate:.0f}/s)")

        try:
            with ThreadPoolExecutor(CREATE_THREADS, thread_name_prefix="bench-create") as pool:
                list(pool.map(create, items))
        finally:
            with self._clients_lock:
                for api in self._clients:
                    with contextlib.suppress(Exception):
                        api.close()
                self._clients.clear()
            self._local = threading.local()
        return time.monotonic() - began

    def policy(self, *, failback_delay: int | None = None, mode: str | None = None) -> dict[str, Any]:
        probe: dict[str, Any] = {"caBundle": self.ca.cert_pem.decode()}
        if failback_delay is not None:
            probe["failbackDelaySeconds"] = failback_delay
        spec: dict[str, Any] = {
            "registry": REGISTRY,
            "region": HOME,
            "replicas": [{"region": r, "endpoint": e} for r, e in self.endpoints().items()],
            "probe": probe,
            # The images are never pushed: replication awareness is not what these benchmarks measure.
            "replicationCheck": False,
            # Unpaced: `failover` measures how fast geopin can repoint against the API server's ceiling.
            "failover": {"maxRepointsPerSecond": 0},
        }
        if mode is not None:
            spec["mode"] = mode
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RegistryPolicy",
            "metadata": {"name": POLICY},
            "spec": spec,
        }

    def create_policy(self, **kwargs: Any) -> None:
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, self.policy(**kwargs))

    def policy_status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
        return dict(body.get("status") or {})

    def list_json(self, path: str) -> list[dict[str, Any]]:
        """A paged LIST as plain JSON (cheaper than the typed client for thousands of objects)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"limit": "2000", **({"continue": token} if token else {})}
            response = self.http.get(path, params=params)
            response.raise_for_status()
            body = response.json()
            items.extend(body["items"])
            token = body["metadata"].get("continue") or ""
            if not token:
                return items

    def deployments_unsettled(self) -> int:
        """How many Deployments the deployment controller has not caught up with yet."""
        return sum(
            1
            for d in self.list_json("/apis/apps/v1/deployments")
            if (d.get("status") or {}).get("observedGeneration", 0) < d["metadata"].get("generation", 0)
        )

    def deployment_images(self, namespace: str | None = None) -> dict[tuple[str, str], str]:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments" if namespace else "/apis/apps/v1/deployments"
        return {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]["template"]["spec"]["containers"][0]["image"]
            for d in self.list_json(path)
        }

    # -- the operator's log and the audit log ----------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.operator.log().splitlines()

    def log_time_of(self, pattern: str, after: float, lines: Sequence[str] | None = None) -> float | None:
        """The time of the first operator log line matching `pattern` stamped at or after `after`."""
        regex = re.compile(pattern)
        for line in lines if lines is not None else self.log_lines():
            stamp = log_time(line)
            # Log stamps have millisecond resolution: allow for the rounding.
            if stamp is not None and stamp >= after - 0.002 and regex.search(line):
                return stamp
        return None

    def patches(self, since_line: int, *, namespace_prefix: str = "", resource: str = "deployments") -> list[Patch]:
        found: list[Patch] = []
        for event in self.cp.audit_events(since_line):
            ref = event.get("objectRef") or {}
            if event.get("verb") != "patch" or ref.get("resource") != resource or ref.get("subresource"):
                continue
            if not str(ref.get("namespace") or "").startswith(namespace_prefix):
                continue
            if (event.get("responseStatus") or {}).get("code") != 200:
                continue
            found.append(
                Patch(
                    user=str((event.get("user") or {}).get("username")),
                    namespace=str(ref.get("namespace")),
                    name=str(ref.get("name")),
                    received=audit_time(event["requestReceivedTimestamp"]),
                    completed=audit_time(event["stageTimestamp"]),
                )
            )
        return found

    def writes_by(self, user: str, since_line: int, until_line: int | None = None) -> dict[str, int]:
        """The user's write requests in the audit log between two line marks, by verb and resource."""
        counts: dict[str, int] = {}
        for event in self.cp.audit_events(since_line)[: None if until_line is None else until_line - since_line]:
            if (event.get("user") or {}).get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            key = f"{event.get('verb')} {ref.get('resource')}" + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            counts[key] = counts.get(key, 0) + 1
        return counts

    def kubernetes_version(self) -> str:
        return str(self.http.get("/version").json().get("gitVersion", "unknown"))


# -- results ---------------------------------------------------------------------------------------


def machine(kubernetes_version: str) -> dict[str, Any]:
    memory_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_mib": round(memory_kib / 1024),
        "python": platform.python_version(),
        "kubernetes": kubernetes_version,
        "kernel": platform.release(),
    }


def results_dir() -> Path:
    return Path(os.environ.get("BENCH_RESULTS_DIR") or REPO_ROOT / "bench" / "results")


def write_result(name: str, kubernetes_version: str, parameters: dict[str, Any], figures: Any) -> Path:
    now = datetime.now(UTC)
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(kubernetes_version),
        "parameters": parameters,
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    say(f"wrote {path}")
    return path


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a plain-text table on stdout."""
    cells = [[str(h) for h in header], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(value.rjust(widths[i]) if index else value.ljust(widths[i]) for i, value in enumerate(row)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5) -> Any:
    return wait_until(condition, timeout=timeout, interval=interval, what=what)


def quantiles_from_buckets(buckets: Sequence[tuple[float, float]], qs: Sequence[float]) -> dict[str, float | None]:
    """Prometheus `histogram_quantile` on cumulative (upper bound, count) pairs, +Inf last."""
    out: dict[str, float | None] = {}
    total = buckets[-1][1] if buckets else 0.0
    for q in qs:
        key = f"p{round(q * 100):d}" if q * 100 == round(q * 100) else f"p{q * 100:g}"
        if total <= 0:
            out[key] = None
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        value: float | None = None
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    value = lower_bound  # as Prometheus: the highest finite bound
                else:
                    span = count - lower_count
                    value = lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
                break
            lower_bound, lower_count = bound, count
        out[key] = value
    return out


def max_bucket(buckets: Sequence[tuple[float, float]]) -> float | None:
    """The upper bound of the highest bucket that gained observations (the max is at most this)."""
    previous = 0.0
    highest: float | None = None
    for bound, count in buckets:
        if count > previous:
            highest = bound
        previous = count
    return highest


def parse_histogram(text: str, name: str, match: Callable[[str], bool] = lambda _labels: True) -> dict[float, float]:
    """Cumulative bucket counts of `name` summed over every series whose label text passes `match`."""
    buckets: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix) :].rpartition("} ")
        le = re.search(r'le="([^"]+)"', labels)
        if le is None or not match(labels):
            continue
        bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(value.split()[0])
    return buckets


def bucket_delta(before: dict[float, float], after: dict[float, float]) -> list[tuple[float, float]]:
    return sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
