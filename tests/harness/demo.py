"""`make demo`: geopin on a real local control plane and three real registry replicas, narrated.

Everything runs in this process's care and is stopped on exit, Ctrl-C included:

1. the control plane (built from the Go module proxy on first use) and three docker-registry
   replicas (eastus, westus, centralus) with a sample image pushed to each;
2. the RegistryPolicy CRD, `geopin run`, an example policy and three Deployments;
3. the tour: pinned to the home region, then the home replica really stopped (SIGKILL), the
   failover with the seconds it took, the replica restarted, the failback after the delay, with
   the Events and the metrics that moved.

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

from kubernetes import client

from tests.harness.controlplane import REPO_ROOT, ControlPlane, find_binaries
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.oci import build_image, push_image
from tests.harness.pki import CA
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

REGISTRY = "contoso.azurecr.io"
APPS = {"web": "shop/web:1.0", "cart": "shop/cart:2.3", "search": "shop/search:0.9"}
FAILBACK_DELAY = 15
POLICY = "contoso"


def say(message: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def policy_manifest(endpoints: dict[str, str], ca_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "geopin.io/v1alpha1",
        "kind": "RegistryPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "registry": REGISTRY,
            "region": "auto",
            "replicas": [{"region": region, "endpoint": endpoint} for region, endpoint in endpoints.items()],
            # Short for the tour; the default is 300 s.
            "probe": {"caBundle": ca_pem, "failbackDelaySeconds": FAILBACK_DELAY},
        },
    }


def deployment_manifest(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": f"{REGISTRY}/{image}"}]},
            },
        },
    }


class Tour:
    def __init__(self, cp: ControlPlane, registries: RegistrySet, operator: Operator) -> None:
        self.cp = cp
        self.registries = registries
        self.operator = operator
        self.api: Any = cp.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.endpoints = {region: registries[region].endpoint for region in registries}

    def images(self) -> dict[str, str]:
        return {
            d.metadata.name: d.spec.template.spec.containers[0].image
            for d in self.apps.list_namespaced_deployment("shop").items
        }

    def all_on(self, region: str) -> bool:
        host = self.endpoints[region]
        images = self.images()
        return len(images) == len(APPS) and all(image.startswith(f"{host}/") for image in images.values())

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.custom.get_cluster_custom_object(
            "geopin.io", "v1alpha1", "registrypolicies", POLICY
        ).get("status", {})
        return status

    def show_images(self) -> None:
        for name, image in sorted(self.images().items()):
            print(f"      shop/{name:<7} {image}", flush=True)

    def show_events(self, since: float) -> None:
        events = self.core.list_namespaced_event("default").items + self.core.list_namespaced_event("shop").items
        recent = [e for e in events if e.source and e.source.component == "geopin" and _stamp(e) >= since - 1]
        for event in sorted(recent, key=_stamp)[-8:]:
            kind = event.involved_object.kind
            print(f"      Event {event.reason:<17} {kind}/{event.involved_object.name}: {event.message}", flush=True)

    def show_metrics(self, *names: str) -> None:
        for line in self.operator.metrics().splitlines():
            if line.startswith(names) and 'policy="contoso"' in line and not line.startswith("#"):
                print(f"      {line}", flush=True)


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
        say("starting etcd, kube-apiserver and kube-controller-manager on loopback (nodes labelled eastus) ...")
        cp = stack.enter_context(ControlPlane(ca=ca, binaries=binaries))
        say(f"control plane ready in {cp.startup_seconds:.1f}s at {cp.url}")
        registries = stack.enter_context(RegistrySet(ca))
        for region in registries:
            say(f"replica {region:<9} docker-registry over TLS at {registries[region].endpoint}")
        for app, image in APPS.items():
            repository, tag = image.split(":")
            built = build_image({"index.html": f"hello from {app}\n".encode()})
            for region in registries:
                push_image(registries[region].endpoint, repository, tag, built, verify=ca.ssl_context())
        say(f"pushed {', '.join(APPS.values())} to every replica")

        install_crd(cp)
        say("installed the RegistryPolicy CRD (deploy/crds/)")
        operator = Operator(cp, workdir)
        stack.callback(operator.stop)
        operator.start()
        say(f"geopin is running (log: {operator.log_path})")
        tour = Tour(cp, registries, operator)
        stack.callback(tour.api.close)

        tour.core.create_namespace({"metadata": {"name": "shop"}})
        policy = policy_manifest(tour.endpoints, ca.cert_pem.decode())
        tour.custom.create_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", policy)
        say(
            f"applied RegistryPolicy {POLICY}: {REGISTRY} → replicas {', '.join(tour.endpoints)} "
            f"(failback delay {FAILBACK_DELAY}s)"
        )
        for app, image in APPS.items():
            tour.apps.create_namespaced_deployment("shop", deployment_manifest(app, image))
        say(f"applied Deployments shop/{', shop/'.join(APPS)} using {REGISTRY}")

        # 1. Pinned to the home region.
        mark = time.time()
        wait_until(lambda: tour.all_on("eastus"), timeout=60, what="pinned to eastus")
        status = wait_until(lambda: (s := tour.status()).get("activeRegion") and s, timeout=30, what="policy status")
        say(f"1. pinned to the home region {status['clusterRegion']} (healthy {status['healthySummary']}):")
        tour.show_images()

        # 2. The home replica really stops.
        registries["eastus"].stop()
        outage = time.monotonic()
        say(f"2. outage: the eastus replica (pid {registries['eastus'].pid}) is SIGKILLed")
        wait_until(lambda: tour.all_on("westus"), timeout=60, interval=0.05, what="failover to westus")
        failover_seconds = time.monotonic() - outage
        # The status loop reports the switch (status, EndpointSwitched Event, metric) within seconds.
        wait_until(lambda: tour.status().get("activeRegion") == "westus", timeout=30, what="status shows westus")
        say(f"   failover to westus in {failover_seconds:.1f}s (kill → last Deployment repointed):")
        tour.show_images()
        tour.show_events(mark)
        tour.show_metrics("geopin_endpoint_switches_total", "geopin_replica_healthy")

        # 3. Recovery, then failback only after the delay.
        mark = time.time()
        registries["eastus"].heal()
        recovered = time.monotonic()
        say(f"3. recovery: eastus is back; workloads return only after {FAILBACK_DELAY}s of uninterrupted health")
        wait_until(lambda: tour.all_on("eastus"), timeout=FAILBACK_DELAY + 60, what="failback to eastus")
        failback_seconds = time.monotonic() - recovered
        wait_until(lambda: tour.status().get("activeRegion") == "eastus", timeout=30, what="status shows eastus")
        say(f"   failback to eastus {failback_seconds:.1f}s after the replica came back:")
        tour.show_images()
        tour.show_events(mark)
        tour.show_metrics("geopin_endpoint_switches_total")

        print(
            "\nTry it yourself:\n"
            f"  {kubectl} --kubeconfig {cp.kubeconfig} get registrypolicies\n"
            f"  {kubectl} --kubeconfig {cp.kubeconfig} -n shop get deploy -o wide\n"
            f"  {sys.executable} -m geopin.cli status --kubeconfig {cp.kubeconfig}\n"
            f"  curl -s http://127.0.0.1:{operator.metrics_port}/metrics | grep ^geopin_\n",
            flush=True,
        )
        say(
            f"tour done in {time.monotonic() - began:.0f}s: "
            f"failover {failover_seconds:.1f}s, failback {failback_seconds:.1f}s"
        )
        if not args.once:
            say("everything stays up until Ctrl-C")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        say("stopping geopin, the registries and the control plane ...")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
