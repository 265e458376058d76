"""Failover as Pods see it, on a real node: what a user of the cluster notices during an outage.

One real node (containerd + kubelet) in the ACR-shaped environment, geopin with the policy written as
on AKS (`registry: contoso.azurecr.io`, replicas by region, default probe settings). N Deployments
pinned to eastus, of which SCALED run one Pod each. Per round, at the moment eastus is SIGKILLed, one
Deployment is scaled to two Pods (a scale-out during the incident) and one Pod is created through
ACR's global endpoint (emulated, failing over after `--global-delay` seconds). Measured:

- outage → the first new Pod Running from a healthy replica (any Pod that did not exist before);
- Pods the failover replaced or restarted: Pods Running before the outage whose UID is gone after it,
  or whose restart count rose (a template repoint is a rolling update);
- geopin's template writes for the switch (the audit log);
- outage → the global endpoint's Pod Running.

Then eastus comes back and the failback is waited out before the next round. The tables show the
median round and the worst.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.harness.acr import AcrRegistrySet
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.nodeenv import (
    NodeEnvironment,
    host_network_deployment,
    host_network_pod,
    pod_namespace,
    registry_pull_secret,
)
from tests.harness.objects import registry_policy
from tests.harness.pki import CA
from tests.harness.procs import free_port
from tests.harness.waiting import WaitTimeout, wait_until

from bench.env import GROUP, PLURAL, VERSION, say, table, write_result

NAME = "pods"
NAMESPACE = "shop"
POLICY = "contoso"
REPO, TAG = "shop/web", "1"
FULL_SIZES, SMOKE_SIZES = (100, 1000), (10,)
FULL_ROUNDS, SMOKE_ROUNDS = 3, 1
# A column: (spec.failover.strategy, maxRepointsPerSecond). Repoint at the default pace and unpaced.
STRATEGIES = {"Redirect": ("Redirect", 20), "Repoint": ("Repoint", 20), "Repoint-unpaced": ("Repoint", 0)}
FULL_STRATEGIES, SMOKE_STRATEGIES = ("Redirect", "Repoint", "Repoint-unpaced"), ("Redirect",)
WEBHOOK_CONFIG = "geopin-bench"
SCALED = 4  # Deployments with a running Pod; the others have replicas: 0
FAILBACK_DELAY = 10  # probe.failbackDelaySeconds: short, so that rounds follow each other quickly
FULL_GLOBAL_DELAY, SMOKE_GLOBAL_DELAY = 60.0, 6.0
POD_TIMEOUT = 180.0


class NodeFleet:
    """The node environment, geopin and N Deployments, with what a round needs to read."""

    def __init__(self, stack: ExitStack, workdir: Path, global_delay: float, column: str) -> None:
        self.strategy, self.per_second = STRATEGIES[column]
        self.global_delay = global_delay
        ca = CA(workdir / "pki")
        self.acr = stack.enter_context(AcrRegistrySet(ca, workdir=workdir / "acr", global_failover_delay=global_delay))
        # A short path: the kubelet's unix sockets live under the node directory (108-byte limit).
        self.env = stack.enter_context(NodeEnvironment(ca, self.acr, workdir=workdir / "n"))
        self.cp = self.env.control_plane
        install_crd(self.cp)
        self.env.push_pod_image(REPO, TAG)
        api = stack.enter_context(self.cp.api_client())
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        registry_pull_secret(self.core, self.acr)
        pod_namespace(self.core, NAMESPACE)
        (workdir / "operator").mkdir()
        self.operator = Operator(self.cp, workdir / "operator", names=self.acr)
        stack.callback(self.operator.stop)
        self.global_image = f"{self.acr.login_server}/{REPO}:{TAG}"

    def image_on(self, region: str) -> str:
        return f"{self.acr[region].host}/{REPO}:{TAG}"

    def create(self, n: int) -> None:
        for i in range(n):
            # Always: every Pod pulls (the node has the image cached after the first round), as Pods
            # on a new node or of a new tag do; an outage only shows in a pull.
            body = host_network_deployment(
                f"app-{i}", self.global_image, replicas=1 if i < SCALED else 0, pull_policy="Always"
            )
            self.apps.create_namespaced_deployment(NAMESPACE, body)
        self.n = n
        spec = {
            "registry": self.acr.login_server,
            "replicas": [{"region": "eastus"}, {"region": "westus"}, {"region": "centralus"}],
            "credentials": {"secretRef": {"namespace": "geopin-system", "name": "acr-pull"}},
            "probe": {"failbackDelaySeconds": FAILBACK_DELAY},
            "failover": {"strategy": self.strategy, "maxRepointsPerSecond": self.per_second},
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, registry_policy(POLICY, spec))

    def templates_on(self, region: str) -> bool:
        image = self.image_on(region)
        items = self.apps.list_namespaced_deployment(NAMESPACE).items
        return len(items) == self.n and all(d.spec.template.spec.containers[0].image == image for d in items)

    def running(self) -> dict[str, tuple[str, int]]:
        """Running Pods of the Deployments: uid -> (image, restart count)."""
        found: dict[str, tuple[str, int]] = {}
        for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector="app").items:
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running is not None and pod.metadata.deletion_timestamp is None:
                found[pod.metadata.uid] = (pod.spec.containers[0].image, statuses[0].restart_count)
        return found

    def settled_on(self, region: str, pods: int) -> bool:
        """Templates on `region` and exactly `pods` Pods, all Running from it (no rollout left over)."""
        if not self.templates_on(region):
            return False
        items = self.core.list_namespaced_pod(NAMESPACE, label_selector="app").items
        running = self.running()
        on_region = all(image == self.image_on(region) for image, _ in running.values())
        return len(items) == pods == len(running) and on_region

    def start_operator(self) -> None:
        """Redirect needs geopin's webhook (and its MutatingWebhookConfiguration); Repoint runs without."""
        if self.strategy != "Redirect":
            self.operator.start()
            return
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        self.operator.start("--webhook-port", str(port), "--webhook-url", url, "--webhook-config", WEBHOOK_CONFIG)

    def settled_after_outage(self) -> bool:
        """Repoint: every template and Pod on westus. Redirect: templates and old Pods stay; the new
        Pod runs from westus."""
        if self.strategy != "Redirect":
            return self.settled_on("westus", SCALED + 1)
        running = self.running()
        on_west = [image for image, _ in running.values() if image == self.image_on("westus")]
        return self.templates_on("eastus") and len(running) == SCALED + 1 and len(on_west) == 1

    def usable(self) -> list[str]:
        body = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
        return list((body.get("status") or {}).get("usableRegions") or [])

    def global_pod_state(self, name: str) -> bool:
        statuses = self.core.read_namespaced_pod(name, NAMESPACE).status.container_statuses or []
        return bool(statuses and statuses[0].state.running is not None)

    def unobserved(self) -> int:
        """Deployments whose latest template the Deployment controller has not acted on yet.

        kube-controller-manager's client sends at most 20 requests/s by default, so the N ReplicaSets a
        first pin of N templates creates take it minutes at N = 1,000; a scale-out queues behind them.
        """
        items = self.apps.list_namespaced_deployment(NAMESPACE).items
        return sum(1 for d in items if (d.status.observed_generation or 0) < d.metadata.generation)

    def template_writes(self, since_line: int) -> int:
        return sum(
            1
            for event in self.cp.audit_events(since_line)
            if (event.get("user") or {}).get("username") == self.operator.user
            and event.get("verb") == "patch"
            and (event.get("objectRef") or {}).get("resource") == "deployments"
            and (event.get("responseStatus") or {}).get("code") == 200
        )


def _round(fleet: NodeFleet, number: int, *, last: bool) -> dict[str, Any]:
    healthy = {fleet.image_on("westus"), fleet.image_on("centralus")}
    before = fleet.running()
    mark = fleet.cp.audit_line_count()
    unobserved = fleet.unobserved()
    fleet.acr["eastus"].stop()
    killed = time.monotonic()
    fleet.apps.patch_namespaced_deployment("app-0", NAMESPACE, {"spec": {"replicas": 2}})
    global_pod = f"via-global-{number}"
    fleet.core.create_namespaced_pod(NAMESPACE, host_network_pod(global_pod, fleet.global_image, pull_policy="Always"))

    first: list[str] = []

    def first_new() -> float | None:
        new = [image for uid, (image, _) in fleet.running().items() if uid not in before and image in healthy]
        first.extend(new[:1])
        return time.monotonic() - killed if new else None

    first_pod = wait_until(first_new, timeout=POD_TIMEOUT, interval=0.2, what="a new Pod running on a healthy replica")
    wait_until(lambda: fleet.global_pod_state(global_pod), timeout=POD_TIMEOUT, interval=0.2,
               what="the global endpoint's Pod running")  # fmt: skip
    global_running = time.monotonic() - killed
    wait_until(fleet.settled_after_outage, timeout=POD_TIMEOUT, what="settled after the outage")
    after = fleet.running()
    replaced = sum(1 for uid in before if uid not in after)
    restarted = sum(1 for uid, (_, count) in before.items() if uid in after and after[uid][1] > count)
    writes = fleet.template_writes(mark)
    say(
        f"  round {number}: first new Pod on a healthy replica {first_pod:.1f}s ({first[0]}), global endpoint's Pod "
        f"{global_running:.1f}s, Pods replaced {replaced} restarted {restarted} of {len(before)}, "
        f"template writes {writes}, Deployments the controller had not caught up with at the outage {unobserved}"
    )

    if not last:  # back to the starting point: eastus serves, the failback is waited out, app-0 has one Pod
        fleet.core.delete_namespaced_pod(global_pod, NAMESPACE, grace_period_seconds=0)
        fleet.apps.patch_namespaced_deployment("app-0", NAMESPACE, {"spec": {"replicas": 1}})
        fleet.acr["eastus"].restart()
        fleet.acr.heal()
        # Repoint's failback writes N templates at the pace and rolls the running ones: scale with N.
        settle = POD_TIMEOUT + fleet.n * 0.3
        wait_until(lambda: "eastus" in fleet.usable() and fleet.templates_on("eastus"),
                   timeout=settle + FAILBACK_DELAY, what="failback")  # fmt: skip
        # The emulated global endpoint returns home only after eastus has been healthy for its delay.
        wait_until(lambda: fleet.acr.global_endpoint.route() == "eastus", timeout=POD_TIMEOUT + fleet.global_delay,
                   what="the global endpoint routing to eastus again")  # fmt: skip
        # Redirect's moved Pod may be the one app-0 kept: its ReplicaSet makes it again, from eastus.
        for pod in fleet.core.list_namespaced_pod(NAMESPACE, label_selector="app").items:
            if pod.spec.containers[0].image != fleet.image_on("eastus"):
                try:
                    fleet.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
                except client.ApiException as e:
                    if e.status != 404:  # Repoint's failback rollout deleted it first
                        raise
        wait_until(lambda: fleet.settled_on("eastus", SCALED), timeout=settle, what="every Pod on eastus again")
        wait_until(lambda: fleet.unobserved() == 0, timeout=settle, what="the Deployment controller caught up")
    return {
        "outage_to_first_new_pod_running": first_pod,
        "outage_to_global_endpoint_pod_running": global_running,
        "pods_running_before": len(before),
        "pods_replaced": replaced,
        "pods_restarted": restarted,
        "template_writes": writes,
        "deployments_unobserved_at_outage": unobserved,
    }


def _summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in rounds]
    return {"median": statistics.median(values), "worst": max(values)}


def _measure(n: int, rounds: int, global_delay: float, strategy: str) -> tuple[str, list[dict[str, Any]]]:
    """(Kubernetes version, one dict per round) in a fresh environment of N Deployments."""
    workdir = Path(tempfile.mkdtemp(prefix="gp-bench-"))
    try:
        with ExitStack() as stack:
            say(f"N={n}, strategy {strategy}: a real node, the ACR-shaped replicas and geopin")
            fleet = NodeFleet(stack, workdir, global_delay, strategy)
            version = str(client.VersionApi(fleet.core.api_client).get_code().git_version)
            fleet.create(n)
            fleet.start_operator()
            wait_until(lambda: fleet.settled_on("eastus", SCALED), timeout=POD_TIMEOUT + n * 0.1,
                       what=f"{n} Deployments pinned to eastus, {SCALED} Pods running")  # fmt: skip
            # The outage finds the cluster at rest, as in production: not with the Deployment controller
            # still creating the ReplicaSets of geopin's first pin (a scale-out would wait behind them).
            wait_until(lambda: fleet.unobserved() == 0, timeout=POD_TIMEOUT + n * 0.3,
                       what="the Deployment controller caught up with the first pin")  # fmt: skip
            results: list[dict[str, Any]] = []
            for number in range(1, rounds + 1):
                try:
                    results.append(_round(fleet, number, last=number == rounds))
                except WaitTimeout as e:  # keep the rounds measured; the result says how many
                    say(f"  round {number} did not finish: {e}")
                    break
            return version, results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _median_worst(figure: dict[str, Any], key: str, spec: str) -> str:
    return f"{figure[key]['median']:{spec}} / {figure[key]['worst']:{spec}}"


def run(
    sizes: list[int] | tuple[int, ...], rounds: int, global_delay: float, strategies: tuple[str, ...] = FULL_STRATEGIES
) -> None:
    figures: list[dict[str, Any]] = []
    version = "unknown"
    for n in sizes:
        for strategy in strategies:
            version, results = _measure(n, rounds, global_delay, strategy)
            if not results:
                continue
            keys = [k for k in results[0] if k != "pods_running_before"]
            figures.append({"n": n, "strategy": strategy, "rounds": results, **{k: _summary(results, k) for k in keys}})
    table(
        "failover on a real node: the Pods' view (median / worst round)",
        [
            "N",
            "strategy",
            "first new Pod running (s)",
            "global endpoint's Pod (s)",
            "Pods replaced",
            "restarted",
            "writes",
        ],
        [
            [
                f["n"],
                f["strategy"],
                _median_worst(f, "outage_to_first_new_pod_running", ".1f"),
                _median_worst(f, "outage_to_global_endpoint_pod_running", ".1f"),
                _median_worst(f, "pods_replaced", "g"),
                _median_worst(f, "pods_restarted", "g"),
                _median_worst(f, "template_writes", "g"),
            ]
            for f in figures
        ],
    )
    parameters = {
        "sizes": list(sizes),
        "rounds": rounds,
        "strategies": list(strategies),
        "pods_running": SCALED,
        "global_failover_delay_seconds": global_delay,
        "failback_delay_seconds": FAILBACK_DELAY,
        "max_repoints_per_second": {column: STRATEGIES[column][1] for column in strategies},
        "note": "Redirect: geopin serves its webhook; Repoint: templates move at the default pace (20/s) or unpaced",
    }
    write_result(NAME, version, parameters, figures)
