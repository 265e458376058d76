"""`make demo`: geopin on a real local control plane and three real registry replicas, narrated.

Starts everything in this process's care (stopped on exit, Ctrl-C included), pushes a sample image
to every replica, installs the CRD, starts `geopin run`, applies the example policy and a
Deployment, and shows the image before and after. Then it stays up for exploration until Ctrl-C;
`--once` stops right away (for scripts and CI).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
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
IMAGE_PATH = "shop/web:1.0"


def say(message: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def policy_manifest(endpoints: dict[str, str], ca_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "geopin.io/v1alpha1",
        "kind": "RegistryPolicy",
        "metadata": {"name": "contoso"},
        "spec": {
            "registry": REGISTRY,
            "region": "auto",
            "replicas": [{"region": region, "endpoint": endpoint} for region, endpoint in endpoints.items()],
            "probe": {"caBundle": ca_pem},
        },
    }


def deployment_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": f"{REGISTRY}/{IMAGE_PATH}"}]},
            },
        },
    }


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
        endpoints = {region: registries[region].endpoint for region in registries}
        for region, endpoint in endpoints.items():
            say(f"replica {region:<9} docker-registry over TLS at {endpoint}")
        image = build_image({"index.html": b"hello from geopin\n"})
        repository, tag = IMAGE_PATH.split(":")
        for endpoint in endpoints.values():
            push_image(endpoint, repository, tag, image, verify=ca.ssl_context())
        say(f"pushed {IMAGE_PATH} ({image.digest[:19]}…) to every replica")

        install_crd(cp)
        say("installed the RegistryPolicy CRD (deploy/crds/)")
        operator = Operator(cp, workdir)
        stack.callback(operator.stop)
        operator.start()
        say(f"geopin is running (log: {operator.log_path}, metrics: http://127.0.0.1:{operator.metrics_port}/metrics)")

        api: Any = cp.api_client()
        stack.callback(api.close)
        core: Any = client.CoreV1Api(api)
        apps: Any = client.AppsV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": "shop"}})
        custom.create_cluster_custom_object(
            "geopin.io", "v1alpha1", "registrypolicies", policy_manifest(endpoints, ca.cert_pem.decode())
        )
        say(f"applied RegistryPolicy contoso: {REGISTRY} with replicas {', '.join(endpoints)}")
        apps.create_namespaced_deployment("shop", deployment_manifest())
        say(f"applied Deployment shop/web with image {REGISTRY}/{IMAGE_PATH}")

        def pinned() -> dict[str, Any] | None:
            body: dict[str, Any] = api.sanitize_for_serialization(apps.read_namespaced_deployment("web", "shop"))
            annotations = body["metadata"].get("annotations") or {}
            return body if "geopin.io/pinned-region" in annotations else None

        body = wait_until(pinned, timeout=60, what="shop/web pinned")
        image_now = body["spec"]["template"]["spec"]["containers"][0]["image"]
        annotations = body["metadata"]["annotations"]
        say(f"geopin pinned shop/web to {annotations['geopin.io/pinned-region']}: image is now {image_now}")
        say(f"original recorded in geopin.io/original-images: {json.loads(annotations['geopin.io/original-images'])}")

        def ready() -> dict[str, Any] | None:
            status = custom.get_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", "contoso").get(
                "status", {}
            )
            return status if any(c.get("status") == "True" for c in status.get("conditions", [])) else None

        status = wait_until(ready, timeout=30, what="policy Ready")
        say(
            f"policy status: cluster region {status['clusterRegion']}, active {status['activeRegion']} "
            f"({status['activeEndpoint']}), pinned workloads {status['workloads']['pinned']}"
        )
        print(
            "\nTry it yourself:\n"
            f"  {kubectl} --kubeconfig {cp.kubeconfig} get registrypolicies\n"
            f"  {kubectl} --kubeconfig {cp.kubeconfig} -n shop get deploy web -o yaml\n"
            f"  curl -s http://127.0.0.1:{operator.metrics_port}/metrics | grep ^geopin_\n",
            flush=True,
        )
        say(f"tour done in {time.monotonic() - began:.0f}s")
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
