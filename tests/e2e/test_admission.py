"""Admission mode on the real API server: Pods are pinned at creation, templates stay as written.

kube-controller-manager creates the Pods of a Deployment; the API server sends each to geopin's
webhook (a real MutatingWebhookConfiguration that geopin keeps in step with its certificate). A
failover changes new Pods only; with the operator down, Pods are still created, unchanged and
without delay (failurePolicy Ignore).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.procs import free_port
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "admission.azurecr.io"
NAMESPACE = "adm"
IMAGE = f"{REGISTRY}/team/web:1"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
CONFIG = "geopin-e2e"


class Env:
    def __init__(self, cp: ControlPlane, registries: RegistrySet, operator: Operator) -> None:
        self.cp = cp
        self.registries = registries
        self.operator = operator
        self.api: Any = cp.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.admission: Any = client.AdmissionregistrationV1Api(self.api)

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(NAMESPACE, label_selector="app=web").items)

    def scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale("web", NAMESPACE, {"spec": {"replicas": replicas}})

    def template_image(self) -> str:
        return str(self.apps.read_namespaced_deployment("web", NAMESPACE).spec.template.spec.containers[0].image)


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    install_crd(control_plane)
    port = free_port()
    with RegistrySet(ca) as registries:
        operator = Operator(control_plane, tmp_path_factory.mktemp("admission-operator"))
        extra = ("--webhook-port", str(port), "--webhook-url", f"https://127.0.0.1:{port}", "--webhook-config", CONFIG)
        operator.start(*extra)
        env = Env(control_plane, registries, operator)
        env.core.create_namespace({"metadata": {"name": NAMESPACE}})
        env.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "admission"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "mode": "Admission",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )
        wait_until(
            lambda: (env.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "admission").get("status") or {}).get(
                "usableRegions"
            ),
            timeout=60,
            what="the policy has decided",
        )
        env.apps.create_namespaced_deployment(
            NAMESPACE,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": IMAGE}]},
                    },
                },
            },
        )
        env.extra = extra  # type: ignore[attr-defined]
        yield env
        if not operator.alive():
            operator.start(*extra)
        env.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "admission")
        wait_until(
            lambda: (
                "admission"
                not in [
                    p["metadata"]["name"]
                    for p in env.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
                ]
            ),
            timeout=30,
            what="policy gone",
        )
        operator.stop()
        env.admission.delete_mutating_webhook_configuration(CONFIG)
        env.core.delete_namespace(NAMESPACE)
        env.api.close()


def test_pods_are_pinned_and_the_template_is_untouched(env: Env) -> None:
    east = env.registries["eastus"].endpoint
    config = env.admission.read_mutating_webhook_configuration(CONFIG)
    hook = config.webhooks[0]
    assert hook.failure_policy == "Ignore"
    assert hook.timeout_seconds == 2
    assert {"kube-system"} <= set(hook.namespace_selector.match_expressions[0].values)

    pods = wait_until(lambda: env.pods(), timeout=60, what="the Deployment's Pod")
    pod = pods[0]
    assert pod.spec.containers[0].image == f"{east}/team/web:1"
    assert pod.metadata.annotations["geopin.io/pinned-region"] == "eastus"
    assert json.loads(pod.metadata.annotations["geopin.io/original-images"]) == {"containers/web": IMAGE}
    deployment = env.apps.read_namespaced_deployment("web", NAMESPACE)
    assert deployment.spec.template.spec.containers[0].image == IMAGE
    assert "geopin.io/original-images" not in (deployment.metadata.annotations or {})
    assert (env.operator.metric("geopin_admission_duration_seconds_count", result="mutated") or 0) >= 1


def test_a_failover_changes_new_pods_only(env: Env) -> None:
    east, west = env.registries["eastus"].endpoint, env.registries["westus"].endpoint
    first = wait_until(lambda: env.pods(), timeout=60, what="the first Pod")[0]
    env.registries["eastus"].stop()
    try:
        wait_until(
            lambda: (
                (env.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "admission").get("status") or {}).get(
                    "activeRegion"
                )
                == "westus"
            ),
            timeout=30,
            what="failed over to westus",
        )
        env.scale(2)
        wait_until(lambda: len(env.pods()) == 2, timeout=60, what="a second Pod")
        pods = env.pods()
        by_uid = {p.metadata.uid: p for p in pods}
        assert by_uid[first.metadata.uid].spec.containers[0].image == f"{east}/team/web:1", (
            "the old Pod is not restarted"
        )
        new = next(p for uid, p in by_uid.items() if uid != first.metadata.uid)
        assert new.spec.containers[0].image == f"{west}/team/web:1"
        assert env.template_image() == IMAGE
    finally:
        env.registries["eastus"].heal()


def test_pods_are_created_unchanged_and_promptly_with_the_operator_down(env: Env) -> None:
    env.operator.stop()
    existing = {p.metadata.uid for p in env.pods()}
    before = len(existing)
    began = time.monotonic()
    env.scale(before + 1)
    wait_until(lambda: len(env.pods()) == before + 1, timeout=30, interval=0.05, what="a new Pod")
    elapsed = time.monotonic() - began
    newest = next(p for p in env.pods() if p.metadata.uid not in existing)
    assert newest.spec.containers[0].image == IMAGE, "admitted unchanged"
    assert "geopin.io/pinned-region" not in (newest.metadata.annotations or {})
    print(f"Pod created {elapsed:.2f}s after the scale-up with the webhook down")
    assert elapsed < 2 + 5  # the webhook timeout, plus the controller's own reaction
    env.operator.start(*env.extra)  # type: ignore[attr-defined]


def test_failure_policy_fail_refuses_pods_while_the_webhook_is_down(env: Env) -> None:
    """`--webhook-failure-policy Fail` (the chart's service.webhook.failurePolicy): the configuration geopin
    writes says so, and the real API server then refuses a Pod while no webhook answers."""

    def hook() -> Any:
        return env.admission.read_mutating_webhook_configuration(CONFIG).webhooks[0]

    env.operator.stop()
    env.operator.start(*env.extra, "--webhook-failure-policy", "Fail", "--webhook-timeout-seconds", "1")  # type: ignore[attr-defined]
    try:
        assert (hook().failure_policy, hook().timeout_seconds) == ("Fail", 1)
        env.operator.stop()
        pod = {"metadata": {"name": "refused"}, "spec": {"containers": [{"name": "web", "image": IMAGE}]}}
        with pytest.raises(client.ApiException) as refused:
            env.core.create_namespaced_pod(NAMESPACE, pod)
        assert refused.value.status == 500
        message = json.loads(refused.value.body or "{}").get("message", "")
        assert 'failed calling webhook "pods.geopin.io"' in message
        assert "connection refused" in message
    finally:
        if env.operator.alive():
            env.operator.stop()
        env.operator.start(*env.extra)  # type: ignore[attr-defined]
    assert (hook().failure_policy, hook().timeout_seconds) == ("Ignore", 2)


def test_a_pod_bigger_than_a_mebibyte_is_pinned(env: Env) -> None:
    """The API server accepts Pods up to etcd's 1.5 MiB and sends the whole object to the webhook
    (aiohttp's default limit was 1 MiB). Dry-run creations: admission runs, nothing is stored."""

    def created(name: str, env_vars: list[dict[str, str]]) -> Any:
        pod = {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "web", "image": IMAGE, "env": env_vars}]},
        }
        return env.core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")

    # The webhook answers (a restart in an earlier test made a new certificate): a small Pod is pinned.
    small = wait_until(
        lambda: (p := created("small", [])).spec.containers[0].image != IMAGE and p,
        timeout=30,
        what="the webhook pinning Pods",
    )
    active = small.spec.containers[0].image.removesuffix("/team/web:1")
    padding = [{"name": f"BLOB_{i}", "value": "x" * (200 * 1024)} for i in range(6)]  # 1.2 MiB
    big = created("big", padding)
    assert big.spec.containers[0].image == f"{active}/team/web:1"
    assert json.loads(big.metadata.annotations["geopin.io/original-images"]) == {"containers/web": IMAGE}
    assert "review failed" not in env.operator.log()
