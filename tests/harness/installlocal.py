"""`make install-local`: geopin from its image, installed with its Helm chart onto the local environment's nodes.

After `make dev-up` (`.dev/`): the image of `make image` (built again unless build/ holds HEAD's, clean),
pushed to every ACR-shaped replica as `contoso.<region>.geo.azurecr.io/geopin` (the same manifest
digest everywhere, as ACR's geo-replication keeps it), then `helm upgrade --install` of charts/geopin
as release `geopin` in `geopin-system`, pulling `contoso.azurecr.io/geopin@sha256:...` (the global
endpoint) through each node's containerd, which trusts the run's CA and gets the registry's
credentials from the kubelet's credential provider: no pull secret.

What the local environment needs beyond the chart's defaults, in `.dev/install-local.values.yaml`:

- `hostNetwork: true`: Pods have no network of their own here (docs/testing.md, Real nodes). Each
  node has its own address in the environment's network (tests/harness/netns.py), so the two replicas
  listen on their own Pod IPs.
- `KUBERNETES_SERVICE_HOST/PORT`: the API server's own address. There is no kube-proxy, so the
  `kubernetes` Service's ClusterIP leads nowhere; in-cluster configuration reads these variables.

The webhook is the chart's default: geopin makes its serving Secret (`geopin-webhook-tls`) itself and
both replicas serve it; the API server calls the webhook through the chart's Service (kube-apiserver
runs with `--enable-aggregator-routing=true`, which sends the call to an endpoint address instead of
the ClusterIP).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.harness import devenv, netns
from tests.harness.chart import CHART, ROOT, tools_bin

RELEASE = "geopin"
NAMESPACE = "geopin-system"
REPOSITORY = "geopin"
WEBHOOK_SECRET = "geopin-webhook-tls"  # made by geopin (--webhook-cert-secret, the chart's default)
IMAGE_DIR = ROOT / "build" / "image"
SUMMARY = ROOT / "build" / "image.summary.json"
SBOM = ROOT / "build" / "image.sbom.json"
LOCK = ROOT / "build" / ".image.lock"
IMAGE_CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements", "operator")


class InstallError(RuntimeError):
    pass


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def current_image() -> dict[str, Any] | None:
    """build/'s image summary when it is HEAD's with a clean build context, else None."""
    if not SUMMARY.exists() or not (IMAGE_DIR / "index.json").exists():
        return None
    summary: dict[str, Any] = json.loads(SUMMARY.read_text())
    revision = summary.get("labels", {}).get("org.opencontainers.image.revision")
    if not context_is_clean() or revision != _git("rev-parse", "HEAD"):
        return None
    return summary


def context_is_clean() -> bool:
    """Does the build context hold exactly HEAD's files (no uncommitted change)?"""
    return not _git("status", "--porcelain", "--", *IMAGE_CONTEXT)


def ensure_image() -> dict[str, Any]:
    """build/'s image summary, built first unless build/ holds HEAD's. One build at a time: two pytest
    workers (test_image, test_install_local) may ask at once, and the second finds the first's."""
    LOCK.parent.mkdir(exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = current_image()
        if summary is not None:
            print(f"install-local: build/image is HEAD's ({summary['manifest']}); not rebuilt", file=sys.stderr)
            return summary
        subprocess.run([str(ROOT / "hack" / "image" / "build.sh")], cwd=ROOT, check=True)
        result: dict[str, Any] = json.loads(SUMMARY.read_text())
        return result


def push(dev_dir: Path, summary: dict[str, Any]) -> list[str]:
    """Copy the layout to every regional replica (inside the environment's name space); their references."""
    registries = json.loads((dev_dir / "registries.json").read_text())
    pushed = []
    for region, entry in registries.items():
        if region == "global":
            continue
        env = {
            **os.environ,
            "REGISTRY_CA": str(dev_dir / "ca.crt"),
            "REGISTRY_USERNAME": entry["username"],
            "REGISTRY_PASSWORD": entry["password"],
            "IMAGE_OUT": str(IMAGE_DIR),
        }
        result = subprocess.run(
            [str(dev_dir / "run"), str(ROOT / "hack" / "image" / "push.sh"), entry["host"], REPOSITORY],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise InstallError(f"pushing to {entry['host']} failed: {result.stderr.strip()}")
        reference = result.stdout.strip().splitlines()[-1]
        if not reference.endswith("@" + summary["manifest"]):
            raise InstallError(f"{entry['host']} stored {reference}, not the layout's {summary['manifest']}")
        pushed.append(reference)
    return pushed


def values(dev_dir: Path, summary: dict[str, Any], replicas: int) -> dict[str, Any]:
    registries = json.loads((dev_dir / "registries.json").read_text())
    kubeconfig = yaml.safe_load((dev_dir / "kubeconfig").read_text())
    server = urlsplit(kubeconfig["clusters"][0]["cluster"]["server"])
    return {
        "replicaCount": replicas,
        "image": {
            "repository": f"{registries['global']['host']}/{REPOSITORY}",
            "digest": summary["manifest"],
            "pullPolicy": "IfNotPresent",
        },
        "hostNetwork": True,
        "operator": {
            "logFormat": "text",
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": server.hostname},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(server.port)},
            ],
        },
    }


def helm(dev_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tools_bin() / "helm"), "--kubeconfig", str(dev_dir / "kubeconfig"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise InstallError(f"helm {args[0]}: {(result.stderr or result.stdout).strip()}")
    return result


def install(dev_dir: Path, sets: list[str] | None = None) -> dict[str, Any]:
    """Build (if needed), push and install; returns what was installed."""
    if not (dev_dir / "registries.json").exists():
        raise InstallError(f"{dev_dir} has no environment: make dev-up first")
    nodes = json.loads((dev_dir / "nodes.json").read_text()) if (dev_dir / "nodes.json").exists() else []
    if not nodes:
        raise InstallError("the environment has no real nodes: make dev-down && make dev-up NODES=2")
    began = time.monotonic()
    summary = ensure_image()
    tools_bin()  # helm: built from the Go module proxy if not cached, before leaving the host's network
    # The Pods' addresses exist only in the environment's network namespace (tests/harness/netns.py): this
    # thread, and every process it starts, works from there.
    with netns.inside(devenv.holder_pid(dev_dir)):
        return _install(dev_dir, summary, sets or [], began, len(nodes))


def _install(dev_dir: Path, summary: dict[str, Any], sets: list[str], began: float, nodes: int) -> dict[str, Any]:
    from kubernetes import client, config

    built = time.monotonic()
    pushed = push(dev_dir, summary)
    print(f"install-local: pushed {', '.join(pushed)} in {time.monotonic() - built:.1f}s", file=sys.stderr)
    # Two replicas need two nodes: with hostNetwork their ports are host ports, one replica per node.
    replicas = min(2, nodes)
    if replicas < 2:
        print("install-local: one node, so one replica (make dev-up NODES=2 gives the chart's two)", file=sys.stderr)
    values_path = dev_dir / "install-local.values.yaml"
    values_path.write_text(yaml.safe_dump(values(dev_dir, summary, replicas), sort_keys=False))
    helm_began = time.monotonic()
    helm(
        dev_dir,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--values",
        str(values_path),
        *(arg for value in sets for arg in ("--set", value)),
        "--wait",
        "--timeout",
        "5m",
    )
    print(f"install-local: helm upgrade --install {RELEASE} (--wait) in {time.monotonic() - helm_began:.1f}s")
    kube = config.new_client_from_config(str(dev_dir / "kubeconfig"))
    try:
        core: Any = client.CoreV1Api(kube)
        pods = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=geopin")
        for pod in pods.items:
            print(f"  pod {pod.metadata.name} on {pod.spec.node_name} ({pod.status.pod_ip}): {pod.status.phase}")
    finally:
        kube.close()
    print(f"install-local: done in {time.monotonic() - began:.1f}s (image {summary['manifest']})")
    return {"image": summary["manifest"], "pushed": pushed, "values": str(values_path), "replicas": replicas}
