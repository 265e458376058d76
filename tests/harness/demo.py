"""`make demo`: geopin on a real local cluster with a real node, ACR's names, narrated.

Everything runs in this process's care and is stopped on exit, Ctrl-C included:

1. the ACR-shaped registry (tests/harness/acr.py): replicas answering as
   contoso.<region>.geo.azurecr.io (eastus, westus, centralus), their data endpoints, and the global
   endpoint contoso.azurecr.io, emulated with ACR's slow, health-aware failover; a control plane
   with kube-scheduler and one real node (containerd + kubelet, eastus, AKS's credential provider);
2. the RegistryPolicy CRD, `geopin run` in the environment's name space, a policy written exactly as
   on AKS (the global registry and regions, nothing else about endpoints), two Deployments geopin
   pins, and one it leaves on the global endpoint for comparison;
3. the tour: the kubelet's `Pulled` Events naming the regional host; the home replica really
   killed (SIGKILL); geopin's failover and the new Pods pulling from the next region, side by side
   with what the Pod pulling through the global endpoint saw meanwhile; recovery and failback.

Then it stays up for exploration until Ctrl-C; `--once` stops after the tour (scripts, CI).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.harness.acr import AcrRegistrySet
from tests.harness.controlplane import REPO_ROOT, find_binaries
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.nodeenv import NodeEnvironment, host_network_pod, pod_namespace
from tests.harness.objects import pull_secret
from tests.harness.pki import CA
from tests.harness.waiting import wait_until

APPS = {"web": "shop/web:1", "cart": "shop/cart:1"}
GLOBAL_APP = "web-via-global"  # the same image as web, left on the global endpoint (geopin.io/skip)
CANARY = "platform/canary:1"
FAILBACK_DELAY = 15
# ACR's global endpoint fails over "on the order of minutes"; shorter here so the tour stays short.
GLOBAL_FAILOVER_DELAY = 20.0
POLICY = "contoso"
POLICY_EXAMPLE = REPO_ROOT / "examples" / "registrypolicy-aks.yaml"
NAMESPACE = "shop"


def say(message: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def detail(message: str) -> None:
    print(f"      {message}", flush=True)


def policy_manifest(registry: str) -> dict[str, Any]:
    """examples/registrypolicy-aks.yaml, written as on AKS (endpoints derived from the registry's
    name), with a failback delay short enough for the tour (the default is 300 s)."""
    policy: dict[str, Any] = yaml.safe_load(POLICY_EXAMPLE.read_text())
    assert policy["spec"]["registry"] == registry, f"{POLICY_EXAMPLE} names another registry"
    policy["spec"]["probe"]["failbackDelaySeconds"] = FAILBACK_DELAY
    return policy


def deployment_manifest(
    name: str, image: str, *, skip: bool = False, pull_policy: str = "IfNotPresent"
) -> dict[str, Any]:
    spec = host_network_pod(name, image, pull_policy=pull_policy)["spec"]
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if skip:
        metadata["annotations"] = {"geopin.io/skip": "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


class Tour:
    def __init__(self, env: NodeEnvironment, operator: Operator) -> None:
        self.env = env
        self.acr = env.acr
        self.operator = operator
        self.api: Any = env.control_plane.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    def image(self, app: str, region: str) -> str:
        host = self.acr.login_server if region == "global" else self.acr[region].host
        return f"{host}/{APPS.get(app, APPS['web'])}"

    def template_image(self, app: str) -> str:
        return str(self.apps.read_namespaced_deployment(app, NAMESPACE).spec.template.spec.containers[0].image)

    def running(self, app: str, image: str) -> str | None:
        """The name of a Running Pod of `app` whose container is `image` (as its spec says)."""
        for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={app}").items:
            statuses = pod.status.container_statuses or []
            if pod.spec.containers[0].image == image and statuses and statuses[0].state.running is not None:
                return str(pod.metadata.name)
        return None

    def all_running_on(self, region: str) -> dict[str, str] | None:
        """app → Running Pod for every pinned app, once each pulled from `region`'s host."""
        pods = {app: pod for app in APPS if (pod := self.running(app, self.image(app, region)))}
        return pods if len(pods) == len(APPS) else None

    def kubelet_events(self, pod: str, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={pod}").items
        found = [e for e in items if e.reason == reason and e.source and e.source.component == "kubelet"]
        return sorted(found, key=_stamp)

    def show_pulls(self, pods: dict[str, str]) -> None:
        for _, pod in sorted(pods.items()):
            for event in self.kubelet_events(pod, "Pulled")[-1:]:
                detail(f"kubelet Pulled  pod/{pod}: {event.message}")

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.custom.get_cluster_custom_object(
            "geopin.io", "v1alpha1", "registrypolicies", POLICY
        ).get("status", {})
        return status

    def show_probes(self) -> None:
        for row in self.status().get("replicas", []):
            detail(f"probe {row['region']:<9} {row['state']:<9} {row.get('message', '')}")

    def show_events(self, since: float) -> None:
        events = self.core.list_namespaced_event("default").items + self.core.list_namespaced_event(NAMESPACE).items
        recent = [e for e in events if e.source and e.source.component == "geopin" and _stamp(e) >= since - 1]
        for event in sorted(recent, key=_stamp)[-8:]:
            kind = event.involved_object.kind
            detail(f"Event {event.reason:<17} {kind}/{event.involved_object.name}: {event.message}")

    def show_metrics(self, *names: str) -> None:
        for line in self.operator.metrics().splitlines():
            if line.startswith(names) and f'policy="{POLICY}"' in line and not line.startswith("#"):
                detail(line)


def _stamp(event: Any) -> float:
    moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return float(moment.timestamp()) if moment else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the tour instead of waiting for Ctrl-C")
    args = parser.parse_args(argv)
    began = time.monotonic()

    say("building (or finding cached) etcd, kube-apiserver, kube-controller-manager, kubectl ...")
    binaries = find_binaries()
    kubectl = binaries / "kubectl"
    workdir = Path(tempfile.mkdtemp(prefix="geopin-demo-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ca = CA(workdir / "pki")
        acr = stack.enter_context(
            AcrRegistrySet(ca, workdir=workdir / "acr", global_failover_delay=GLOBAL_FAILOVER_DELAY)
        )
        for region, replica in acr.items():
            say(f"replica {region:<9} {replica.host} (docker-registry, TLS, auth), blobs via {replica.data_host}")
        say(
            f"global endpoint {acr.login_server}: routes to a healthy replica, fails over "
            f"{GLOBAL_FAILOVER_DELAY:g}s after its replica dies (emulated; ACR: minutes)"
        )
        say("starting the control plane with kube-scheduler, and a node (containerd + kubelet) ...")
        env = stack.enter_context(NodeEnvironment(ca, acr, workdir=workdir / "nodes"))
        for node in env.nodes.values():
            say(f"node {node.name}: Ready, region {node.region}, node image {node.node_image_version}")
        for image in (*APPS.values(), CANARY):
            repository, tag = image.split(":")
            env.push_pod_image(repository, tag, label=image)
        say(f"pushed {', '.join(APPS.values())} and {CANARY} to every replica")

        install_crd(env.control_plane)
        operator = Operator(env.control_plane, workdir, names=acr)
        stack.callback(operator.stop)
        tour = Tour(env, operator)
        stack.callback(tour.api.close)
        tour.core.create_namespace({"metadata": {"name": "geopin-system"}})
        pod_namespace(tour.core, NAMESPACE)
        tour.core.create_namespaced_secret("geopin-system", pull_secret("acr-pull", acr.login_server, acr.auth))
        operator.start()
        say(f"geopin is running in the environment's name space (log: {operator.log_path})")

        tour.custom.create_cluster_custom_object(
            "geopin.io", "v1alpha1", "registrypolicies", policy_manifest(acr.login_server)
        )
        say(f"applied {POLICY_EXAMPLE.relative_to(REPO_ROOT)}: registry {acr.login_server}, replicas by region")
        for app, image in APPS.items():
            tour.apps.create_namespaced_deployment(NAMESPACE, deployment_manifest(app, f"{acr.login_server}/{image}"))
        global_image = tour.image("web", "global")
        tour.apps.create_namespaced_deployment(
            NAMESPACE, deployment_manifest(GLOBAL_APP, global_image, skip=True, pull_policy="Always")
        )
        say(f"applied Deployments shop/{', shop/'.join(APPS)} using {acr.login_server}, and shop/{GLOBAL_APP}")
        detail(f"(geopin.io/skip: it keeps pulling {global_image} through the global endpoint)")

        # 1. Pinned to the home region: the kubelet pulled from the regional host.
        mark = time.time()
        pods = wait_until(lambda: tour.all_running_on("eastus"), timeout=120, what="Pods running from eastus")
        status = wait_until(lambda: (s := tour.status()).get("activeRegion") and s, timeout=30, what="policy status")
        home, healthy = status["clusterRegion"], status["healthySummary"]
        say(f"1. pinned to the home region {home} (healthy {healthy}); the Pods run:")
        tour.show_pulls(pods)
        via_global = wait_until(lambda: tour.running(GLOBAL_APP, global_image), timeout=120, what="the global Pod")
        tour.show_pulls({GLOBAL_APP: via_global})
        tour.show_probes()

        # 2. The home replica really stops. The global endpoint's Pod is recreated at that moment, so
        # it must pull (imagePullPolicy Always) through contoso.azurecr.io, still routed to eastus.
        mark = time.time()
        acr["eastus"].stop()
        outage = time.monotonic()
        tour.core.delete_namespaced_pod(via_global, NAMESPACE, grace_period_seconds=0)
        say(f"2. outage: the eastus replica (pid {acr['eastus'].pid}) is SIGKILLed")
        wait_until(
            lambda: all(tour.template_image(app) == tour.image(app, "westus") for app in APPS),
            timeout=60,
            interval=0.05,
            what="failover to westus",
        )
        repointed = time.monotonic() - outage
        pods = wait_until(lambda: tour.all_running_on("westus"), timeout=120, what="Pods running from westus")
        geopin_running = time.monotonic() - outage
        wait_until(lambda: tour.status().get("activeRegion") == "westus", timeout=30, what="status shows westus")
        say(f"   geopin: Deployments repointed to westus in {repointed:.1f}s, Pods running in {geopin_running:.1f}s:")
        tour.show_pulls(pods)
        tour.show_events(mark)
        tour.show_metrics("geopin_endpoint_switches_total", "geopin_replica_healthy")
        say(f"   meanwhile, shop/{GLOBAL_APP} pulls through {acr.login_server} (still routed to eastus) ...")
        via_global = wait_until(
            lambda: tour.running(GLOBAL_APP, global_image), timeout=GLOBAL_FAILOVER_DELAY + 120, what="the global Pod"
        )
        global_running = time.monotonic() - outage
        failures = tour.kubelet_events(via_global, "Failed")
        attempts = sum(e.count or 1 for e in failures if "Failed to pull" in (e.message or ""))
        if failures:
            message = failures[0].message
            shown = message if len(message) <= 200 else f"{message[:90]} ... {message[-100:]}"
            detail(f"kubelet Failed  pod/{via_global}: {shown}")
        tour.show_pulls({GLOBAL_APP: via_global})
        say(
            f"   side by side: geopin's Pods ran {geopin_running:.1f}s after the kill; the Pod on the global endpoint "
            f"failed {attempts} pulls and ran after {global_running:.1f}s (now routed to {acr.global_endpoint.route()})"
        )

        # 3. Recovery, then failback only after the delay.
        mark = time.time()
        acr.heal()
        recovered = time.monotonic()
        say(f"3. recovery: eastus is back; workloads return only after {FAILBACK_DELAY}s of uninterrupted health")
        pods = wait_until(
            lambda: tour.all_running_on("eastus"), timeout=FAILBACK_DELAY + 120, what="failback to eastus"
        )
        failback_seconds = time.monotonic() - recovered
        wait_until(lambda: tour.status().get("activeRegion") == "eastus", timeout=30, what="status shows eastus")
        say(f"   failback to eastus {failback_seconds:.1f}s after the replica came back; the Pods run:")
        tour.show_pulls(pods)
        tour.show_events(mark)
        tour.show_metrics("geopin_endpoint_switches_total")

        kubeconfig = env.control_plane.kubeconfig
        print(
            "\nTry it yourself:\n"
            f"  {kubectl} --kubeconfig {kubeconfig} get registrypolicies\n"
            f"  {kubectl} --kubeconfig {kubeconfig} -n {NAMESPACE} get deploy,pods -o wide\n"
            f"  {kubectl} --kubeconfig {kubeconfig} -n {NAMESPACE} get events --field-selector reason=Pulled\n"
            f"  {sys.executable} -m geopin.cli status --kubeconfig {kubeconfig}\n"
            f"  curl -s http://127.0.0.1:{operator.metrics_port}/metrics | grep ^geopin_\n",
            flush=True,
        )
        say(
            f"tour done in {time.monotonic() - began:.0f}s: failover {repointed:.1f}s (Pods running "
            f"{geopin_running:.1f}s), global endpoint {global_running:.1f}s, failback {failback_seconds:.1f}s"
        )
        if not args.once:
            say("everything stays up until Ctrl-C")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        say("stopping geopin, the node, the control plane and the registries ...")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
