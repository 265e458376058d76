"""Failover without restarts on a real node: Redirect and Rescue, as the kubelet sees them.

The policy is written as on AKS with the defaults (`strategy: Redirect`, `repointAfterSeconds: 600`,
`rescuePods: true`); geopin serves its webhook and keeps its MutatingWebhookConfiguration, so new Pods
can be redirected. The kubelet's own `Pulled` Events and the API server's audit log are the evidence.

geopin runs as the chart runs it: the chart's default flags for the webhook (its own serving Secret,
its own configuration) and, with a real token of the chart's ServiceAccount, only the chart's RBAC
(least privilege: the last test finds no refused request in the audit log).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.chart import ChartServiceAccount
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.nodeenv import host_network_pod, pod_namespace, registry_pull_secret
from tests.harness.policies import PolicyClient
from tests.harness.procs import free_port
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.nodeenv import NodeEnvironment

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

POLICY = "contoso"
REPO, TAG = "shop/web", "1"
RELEASE = CONFIG = "geopin-redirect-e2e"  # the chart names the configuration after the release
PULL_TIMEOUT = 120.0
# GEOPIN_REDIRECT_DEPLOYMENTS=30 GEOPIN_OUTAGE_SECONDS=120: the figures of docs/operations.md.
DEPLOYMENTS = int(os.environ.get("GEOPIN_REDIRECT_DEPLOYMENTS") or 10)
# Well past detection (about 5 s), so a repoint would have shown; GEOPIN_OUTAGE_SECONDS=120 for the long run.
OUTAGE_SECONDS = float(os.environ.get("GEOPIN_OUTAGE_SECONDS") or 15)


class Env:
    def __init__(self, node_env: NodeEnvironment, api: Any, operator: Operator) -> None:
        self.node_env = node_env
        self.acr = node_env.acr
        self.cp = node_env.control_plane
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.policy = PolicyClient(api, POLICY)
        self.operator = operator

    def image(self, region: str) -> str:
        return f"{self.acr[region].host}/{REPO}:{TAG}"

    def create_policy(self, namespace: str, failback_delay: int = 3600, **spec: Any) -> None:
        self.policy.create({
            "registry": self.acr.login_server,
            "replicas": [{"region": "eastus"}, {"region": "westus"}, {"region": "centralus"}],
            "credentials": {"secretRef": {"namespace": "geopin-system", "name": "acr-pull"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            # Faster detection than the default 5 s; by default no failback while a test runs.
            "probe": {"intervalSeconds": 2, "timeoutSeconds": 1, "failbackDelaySeconds": failback_delay},
            **spec,
        })  # fmt: skip

    def status(self) -> dict[str, Any]:
        return self.policy.status()

    def condition(self, type_: str) -> dict[str, Any] | None:
        return self.policy.condition(type_)

    def deployment(
        self, namespace: str, name: str, replicas: int, pull_policy: str = "IfNotPresent", **annotations: str
    ) -> None:
        spec = host_network_pod(name, f"{self.acr.login_server}/{REPO}:{TAG}", pull_policy=pull_policy)["spec"]
        self.apps.create_namespaced_deployment(
            namespace,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "annotations": annotations},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
                },
            },
        )

    def templates(self, namespace: str) -> dict[str, str]:
        items = self.apps.list_namespaced_deployment(namespace).items
        return {d.metadata.name: d.spec.template.spec.containers[0].image for d in items}

    def pods(self, namespace: str) -> list[Any]:
        return [p for p in self.core.list_namespaced_pod(namespace).items if p.metadata.deletion_timestamp is None]

    def running(self, namespace: str) -> dict[str, tuple[str, str, int]]:
        """uid -> (Deployment, image, restart count) of every Running Pod."""
        found = {}
        for pod in self.pods(namespace):
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running is not None:
                found[pod.metadata.uid] = (
                    pod.metadata.labels["app"],
                    pod.spec.containers[0].image,
                    statuses[0].restart_count,
                )
        return found

    def waiting_reason(self, pod: Any) -> str | None:
        statuses = pod.status.container_statuses or []
        if statuses and statuses[0].state.waiting is not None:
            return str(statuses[0].state.waiting.reason)
        return None

    def template_writes(self, since_line: int) -> list[str]:
        return [name for name, _ in self.timed_template_writes(since_line)]

    def timed_template_writes(self, since_line: int) -> list[tuple[str, float]]:
        """(Deployment, when the API server received it) of geopin's successful template patches."""
        return [
            (
                str((e.get("objectRef") or {}).get("name")),
                datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp(),
            )
            for e in self.cp.audit_events(since_line)
            if (e.get("user") or {}).get("username") == self.operator.user
            and e.get("verb") == "patch"
            and (e.get("objectRef") or {}).get("resource") == "deployments"
            and (e.get("responseStatus") or {}).get("code") == 200
        ]

    def events(self, namespace: str, reason: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items if e.reason == reason]


@pytest.fixture(scope="module")
def env(node_env: NodeEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    install_crd(node_env.control_plane)
    node_env.push_pod_image(REPO, TAG)
    api = node_env.control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    registry_pull_secret(core, node_env.acr)
    port = free_port()
    workdir = tmp_path_factory.mktemp("redirect-operator")
    # spec.credentials.secretRef reads geopin-system/acr-pull: Secrets there only.
    sets = ("rbac.secrets.enabled=true", "rbac.secrets.namespaces={geopin-system}")
    with ChartServiceAccount(node_env.control_plane, RELEASE, "geopin-system", workdir, sets) as account:
        operator = Operator(node_env.control_plane, workdir, user=account.user, groups=(), names=node_env.acr)
        operator.kubeconfig = account.kubeconfig
        operator.start(
            "--webhook-port", str(port), "--webhook-url", f"https://127.0.0.1:{port}", "--webhook-config", CONFIG,
            "--webhook-cert-secret", f"geopin-system/{RELEASE}-webhook-tls",
        )  # fmt: skip
        try:
            yield Env(node_env, api, operator)
        finally:
            operator.resume()
            operator.stop()
            client.AdmissionregistrationV1Api(api).delete_mutating_webhook_configuration(CONFIG)
            core.delete_namespaced_secret(f"{RELEASE}-webhook-tls", "geopin-system")
            api.close()


@pytest.fixture
def namespace(env: Env) -> Iterator[str]:
    name = f"redirect-{uuid.uuid4().hex[:6]}"
    pod_namespace(env.core, name)
    try:
        yield name
    finally:
        env.operator.resume()
        if not env.operator.alive():
            env.operator.restart()
        env.policy.delete()
        env.acr.heal()
        env.core.delete_namespace(name)


def test_an_outage_restarts_nothing_and_new_pods_come_from_the_next_replica(env: Env, namespace: str) -> None:
    east, west = env.image("eastus"), env.image("westus")
    env.create_policy(namespace)
    for i in range(DEPLOYMENTS):
        env.deployment(namespace, f"app-{i}", replicas=2)
    wait_until(lambda: set(env.templates(namespace).values()) == {east}, timeout=60, what="every template on eastus")
    wait_until(lambda: len(env.running(namespace)) == 2 * DEPLOYMENTS and all(
        image == east for _, image, _ in env.running(namespace).values()), timeout=PULL_TIMEOUT,
        what=f"{2 * DEPLOYMENTS} Pods Running from eastus")  # fmt: skip
    path = wait_until(lambda: env.condition("FailoverPath"), timeout=30, what="the FailoverPath condition")
    assert (path["status"], path["reason"]) == ("True", "Redirect"), path
    before = env.running(namespace)
    mark = env.cp.audit_line_count()

    env.acr["eastus"].stop()
    killed = time.monotonic()
    wait_until(lambda: "eastus" not in env.status().get("usableRegions", ["eastus"]), timeout=30,
               what="eastus unusable")  # fmt: skip
    for i in range(DEPLOYMENTS):
        env.apps.patch_namespaced_deployment_scale(f"app-{i}", namespace, {"spec": {"replicas": 3}})

    def scaled_out() -> bool:
        running = env.running(namespace)
        new = [image for uid, (_, image, _) in running.items() if uid not in before]
        return len(new) == DEPLOYMENTS and all(image == west for image in new)

    wait_until(scaled_out, timeout=PULL_TIMEOUT, interval=0.2, what="one new Pod per Deployment, Running from westus")
    first_new = time.monotonic() - killed
    wait_until(lambda: time.monotonic() - killed >= OUTAGE_SECONDS, timeout=OUTAGE_SECONDS + 5, what="the outage")

    # Nothing moved: no template write, every Pod that ran before runs on, same UID, same restarts.
    assert env.template_writes(mark) == []
    assert set(env.templates(namespace).values()) == {east}
    after = env.running(namespace)
    assert {uid: before[uid] for uid in before} == {uid: after.get(uid) for uid in before}
    # The new Pods carry their pin; the kubelet pulled them from westus.
    for pod in env.pods(namespace):
        if pod.metadata.uid not in before:
            assert pod.metadata.annotations["geopin.io/pinned-region"] == "westus"
    pulled = [e for e in env.events(namespace, "Pulled") if f'"{west}"' in (e.message or "")]
    assert len({e.involved_object.name for e in pulled}) >= 1  # the image is pulled once per node
    assert env.operator.metric("geopin_pods_redirected_total", policy=POLICY, from_region="eastus",
                               to_region="westus") == DEPLOYMENTS  # fmt: skip
    redirected: list[Any] = wait_until(
        lambda: found if len(found := env.events(namespace, "PodRedirected")) == DEPLOYMENTS else None,
        timeout=30,
        what="a PodRedirected Event each",
    )
    assert {e.involved_object.name for e in redirected} == {f"app-{i}" for i in range(DEPLOYMENTS)}
    print(f"redirect: first new Pod Running from westus after {first_new:.1f}s; 0 template writes, 0 restarts")


def test_pods_stuck_while_geopin_was_paused_are_rescued_in_place(env: Env, namespace: str) -> None:
    east, west = env.image("eastus"), env.image("westus")
    count = 3
    env.create_policy(namespace)
    for i in range(count):
        # Always: the node has the image already, and only a pull can get stuck.
        env.deployment(namespace, f"app-{i}", replicas=1, pull_policy="Always")
    wait_until(lambda: len(env.running(namespace)) == count and all(
        image == east for _, image, _ in env.running(namespace).values()), timeout=PULL_TIMEOUT,
        what="Pods Running from eastus")  # fmt: skip
    before = set(env.running(namespace))
    rescued_before = env.operator.metric("geopin_pods_rescued_total", policy=POLICY, from_region="eastus",
                                         to_region="westus") or 0  # fmt: skip

    env.operator.pause()  # SIGSTOP: the webhook times out and fails open
    env.acr["eastus"].stop()
    for i in range(count):
        env.apps.patch_namespaced_deployment_scale(f"app-{i}", namespace, {"spec": {"replicas": 2}})

    def stuck() -> dict[str, str] | None:
        found = {p.metadata.uid: p.metadata.name for p in env.pods(namespace) if p.metadata.uid not in before
                 and env.waiting_reason(p) in ("ErrImagePull", "ImagePullBackOff")}  # fmt: skip
        return found if len(found) == count else None

    stuck_pods = wait_until(stuck, timeout=PULL_TIMEOUT, what="new Pods stuck pulling from eastus")
    for pod in env.pods(namespace):
        if pod.metadata.uid in stuck_pods:
            assert pod.spec.containers[0].image == east  # admitted unchanged: the webhook was not there
    env.operator.resume()
    resumed = time.monotonic()

    def rescued() -> bool:
        running = env.running(namespace)
        return all(uid in running and running[uid][1] == west for uid in stuck_pods)

    wait_until(rescued, timeout=PULL_TIMEOUT, interval=0.5, what="each stuck Pod Running from westus, same UID")
    print(f"rescue: stuck Pods Running from westus {time.monotonic() - resumed:.1f}s after geopin resumed")
    assert before <= set(env.running(namespace))  # the old Pods were never touched
    rescued_now = env.operator.metric("geopin_pods_rescued_total", policy=POLICY, from_region="eastus",
                                      to_region="westus")  # fmt: skip
    assert rescued_now == rescued_before + count
    events: list[Any] = wait_until(
        lambda: found if len(found := env.events(namespace, "PodRescued")) >= count else None,
        timeout=30,
        what="a PodRescued Event each",
    )
    assert {e.involved_object.uid for e in events} == set(stuck_pods)


def test_a_long_outage_moves_templates_after_repoint_after_seconds_paced_and_only_those_come_back(
    env: Env, namespace: str
) -> None:
    east, west, central = env.image("eastus"), env.image("westus"), env.image("centralus")
    hold, per_second, count = 30, 5, 15
    env.create_policy(
        namespace, failback_delay=2, failover={"repointAfterSeconds": hold, "maxRepointsPerSecond": per_second}
    )
    for i in range(count):
        env.deployment(namespace, f"app-{i}", replicas=0)
    for i in range(3):  # pinned by their own preference to a replica that stays healthy: never written
        env.deployment(namespace, f"central-{i}", replicas=0, **{"geopin.io/region": "centralus"})
    expected = {**{f"app-{i}": east for i in range(count)}, **{f"central-{i}": central for i in range(3)}}
    wait_until(lambda: env.templates(namespace) == expected, timeout=60, what="pinned: eastus, and centralus by choice")

    mark = env.cp.audit_line_count()
    env.acr["eastus"].stop()
    killed = time.time()

    def shown_unhealthy() -> bool:
        rows = env.status().get("replicas") or []
        return any(r.get("region") == "eastus" and r.get("state") == "Unhealthy" for r in rows)

    wait_until(shown_unhealthy, timeout=30, what="eastus Unhealthy in the status")
    detected = time.time() - killed
    # A restart half-way through the hold (a rollout, a new leader) resumes it from the status: the
    # templates move about `hold` after the outage was detected, not `hold` after the restart.
    env.operator.restart()
    restarted = time.time() - killed
    moved = {**expected, **{f"app-{i}": west for i in range(count)}}
    wait_until(lambda: env.templates(namespace) == moved, timeout=hold + 60, what="templates on westus after the hold")
    writes = env.timed_template_writes(mark)
    assert sorted(name for name, _ in writes) == sorted(f"app-{i}" for i in range(count)), writes
    stamps = sorted(stamp for _, stamp in writes)
    assert stamps[0] - killed >= hold, f"first template write {stamps[0] - killed:.1f}s after the kill"
    # Started again, its own probes take about as long as `detected` to judge eastus: a hold started
    # afresh would end no earlier than restarted + detected + hold.
    assert stamps[0] - killed < restarted + hold, (
        f"first write {stamps[0] - killed:.1f}s after the kill: the hold was not resumed "
        f"(detected at {detected:.1f}s, restarted at {restarted:.1f}s)"
    )
    busiest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert busiest <= per_second + 1, stamps  # +1: jitter can pull slot s + 1.0 inside
    print(f"repointAfterSeconds {hold}: first template write {stamps[0] - killed:.1f}s after the kill, "
          f"{count} writes over {stamps[-1] - stamps[0]:.1f}s")  # fmt: skip

    mark = env.cp.audit_line_count()
    env.acr.heal()
    wait_until(lambda: env.templates(namespace) == expected, timeout=60, what="failback to eastus")
    back = env.template_writes(mark)
    assert sorted(back) == sorted(f"app-{i}" for i in range(count)), back  # only those that moved


def test_the_charts_service_account_was_never_refused(env: Env) -> None:
    """Last in this file: every request geopin sent above, Redirect, Rescue and Repoint included,
    was allowed by the chart's RBAC alone."""
    refused = [
        (e["verb"], (e.get("objectRef") or {}).get("resource"), (e.get("objectRef") or {}).get("subresource"))
        for e in env.cp.audit_events(0)
        if (e.get("user") or {}).get("username") == env.operator.user
        and (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert refused == []
    sent = {
        (e["verb"], (e.get("objectRef") or {}).get("resource"))
        for e in env.cp.audit_events(0)
        if (e.get("user") or {}).get("username") == env.operator.user
    }
    # What this file made geopin write, each through the chart's RBAC (the audit log keeps writes only;
    # a refused read would be in geopin's log, and the Pods above would not have been rescued).
    assert {("create", "secrets"), ("patch", "pods"), ("patch", "deployments"), ("create", "events"),
            ("create", "mutatingwebhookconfigurations")} <= sent  # fmt: skip
    assert "forbidden" not in env.operator.log().lower()
