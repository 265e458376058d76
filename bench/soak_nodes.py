"""The soak's real node: Pods that pull from ACR-shaped replicas, through data endpoints, after replication.

The soak's control plane is a NodeEnvironment's (kube-scheduler and one real node: containerd and a
kubelet with AKS's credential provider). Beside the soak's two registries stands a third one shaped as
ACR is (tests/harness/acr.py): `contoso.azurecr.io` with regional names, data endpoints that serve the
blobs, and a ReplicationEmulator copying what users push in SOURCE to the other regions after a lag.
Policy `contoso` pins NAMESPACE's Deployments with the Redirect strategy (templates stay where they
are; new Pods are redirected at admission by both geopins' webhooks) and a deep probe (canaryImage: a
dead data endpoint makes its replica unhealthy while its /v2/ answers).

Its faults:

- `acr-kill`: a replica's registry SIGKILLed, and one Deployment scaled out meanwhile (a Pod that must
  pull during the outage);
- `data-endpoint`: a replica's data endpoint answering 503, or stopped, with a scale-out as above;
- `replication-lag`: one region's replication lag raised to 30 to 60 s, a new tag pushed in SOURCE and
  a Deployment rolled to it by its user.

Its invariants (numbered as in bench/soak_checks.py, with two of its own):

1. No Pod waits on a replica that has been down longer than the budget (unless geopin was disrupted
   meanwhile), and every Pod runs within POD_BUDGET_SECONDS of its creation.
2. The image path of every template is its user's.
7. Never pinned before replicated: no template or Pod names a replica its image had not reached, unless
   a HEAD there could have failed meanwhile (geopin then takes the image as present: fail open).
8. An outage restarts nothing: no Running Pod restarts; a template keeps its pin while its replica is
   down (Redirect: it may move to a preferred replica, never away to a later one); no Pod is replaced
   unless its Deployment changed (its user's edit or scale-in, or geopin moving a new tag to a
   preferred replica once it replicated there).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from tests.harness import oci
from tests.harness.acr import AcrRegistrySet
from tests.harness.nodeenv import (
    NodeEnvironment,
    host_network_deployment,
    registry_pull_secret,
    wait_for_service_account,
)
from tests.harness.objects import registry_policy
from tests.harness.replication import ReplicationEmulator

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from tests.harness.pki import CA

    from bench.soak_checks import Checker

POLICY, NAMESPACE = "contoso", "soak-pods"
REGIONS = ("eastus", "westus", "centralus")
SOURCE = "centralus"  # where the users' CI pushes (ACR takes a push at the replica nearest the pusher)
REPO, CANARY = "shop/web", "platform/canary:1"
APPS = 3  # Deployments of one running Pod each
BASE_LAG = 1.0
LAG_SPIKE_SECONDS = (30.0, 60.0)
POD_BUDGET_SECONDS = 120.0  # creation to Running, through a failover and a kubelet pull back-off
REPLACE_WINDOW_SECONDS = 2 * POD_BUDGET_SECONDS  # a template change or scale-in to its old Pods gone
FAIL_OPEN_SECONDS = 30.0  # after a replica's registry is back: geopin's fail-open answers expire (10 s)
WEIGHTS = {"acr-kill": 2, "data-endpoint": 2, "replication-lag": 2}


class NodePart:
    """The ACR-shaped replicas, the node, policy `contoso` and its Deployments; their faults and checks."""

    def __init__(self, stack: ExitStack, ca: CA, workdir: Path) -> None:
        self.acr = stack.enter_context(AcrRegistrySet(ca, REGIONS, workdir=workdir / "acr"))
        # A short path: the kubelet's unix sockets live under the node directory (108-byte limit).
        self.nodes = stack.enter_context(NodeEnvironment(ca, self.acr, workdir=workdir / "n"))
        self.cp = self.nodes.control_plane
        canary_repo, canary_tag = CANARY.split(":")
        for region in REGIONS:
            with self.acr[region].client() as http:
                oci.push(http, canary_repo, canary_tag, oci.build_image({"ref": CANARY.encode()}))
        self.nodes.push_pod_image(REPO, "1")
        # Polled twice a second: each poll asks the source for every tag, and each request costs the
        # registry a bcrypt check; the lags are seconds.
        self.replication = stack.enter_context(
            ReplicationEmulator(self.acr[SOURCE], self.acr.values(), BASE_LAG, poll_interval=0.5)
        )
        self.login = self.acr.login_server
        self.intent: dict[str, str] = {}  # Deployment -> its user's image
        self.scale: dict[str, int] = {}  # Deployment -> its user's replicas
        self.changed: dict[str, float] = {}  # Deployment -> when its user last changed it (monotonic)
        self.down: dict[str, tuple[float, str]] = {}  # region -> (since, why)
        self.registry_up_at: dict[str, float] = {}  # region -> when its registry last came back
        self.pods_seen: dict[str, tuple[str, str, int]] = {}  # uid of a Running Pod -> (name, Deployment, restarts)
        self.uids_running: set[str] = set()
        self.templates: dict[str, tuple[str, str]] = {}  # Deployment -> (template image, intent) last seen
        self.template_moves_on_outage = 0
        self.tags = 1
        self.apps: Any = None
        self.core: Any = None

    # -- the environment ------------------------------------------------------------------------------

    def create(self, core: Any, apps: Any, custom: Any) -> None:
        self.core, self.apps = core, apps
        registry_pull_secret(core, self.acr)
        core.create_namespace({"metadata": {"name": NAMESPACE}})  # its ServiceAccount: in start_pods()
        for i in range(APPS):
            name = f"web-{i}"
            # Always: every new Pod asks its registry, as a Pod of a new tag or on a new node does.
            # No Pod until the template is pinned (start_pods): one start each, not a start and a rollout.
            body = host_network_deployment(name, f"{self.login}/{REPO}:1", replicas=0, pull_policy="Always")
            apps.create_namespaced_deployment(NAMESPACE, body)
            self.intent[name], self.scale[name], self.changed[name] = f"{self.login}/{REPO}:1", 0, time.monotonic()
        custom.create_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", self.policy_body())

    def start_pods(self) -> None:
        """One Pod per Deployment, once geopin has pinned the templates."""
        wait_for_service_account(self.core, NAMESPACE)
        for name in sorted(self.intent):
            self._scale(name, 1)

    def policy_body(self) -> dict[str, Any]:
        spec = {
            # As on AKS: the global login server and regions; every endpoint is derived.
            "registry": self.login,
            "region": "eastus",
            "replicas": [{"region": r} for r in REGIONS],
            "credentials": {"secretRef": {"namespace": "geopin-system", "name": "acr-pull"}},
            "probe": {
                "canaryImage": CANARY,
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "failureThreshold": 2,
                "failbackDelaySeconds": 5,
            },
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "failover": {"strategy": "Redirect"},
        }
        return registry_policy(POLICY, spec)

    @staticmethod
    def webhook_args(index: int, port: int) -> list[str]:
        """Each geopin keeps its own MutatingWebhookConfiguration: the API server asks both, as it
        would ask the chart's Service, and either redirects a new Pod."""
        return ["--webhook-url", f"https://127.0.0.1:{port}", "--webhook-config", f"geopin-soak-{index}"]

    def host_region(self, image: str) -> str | None:
        host = image.split("/", 1)[0]
        return next((r for r in REGIONS if self.acr[r].host == host), None)

    def replicated(self, image: str, region: str) -> bool:
        """Has `image` (a tag of REPO) reached `region`? Tag 1 was pushed everywhere."""
        tag = image.rsplit(":", 1)[-1]
        if tag == "1" or region == SOURCE:
            return True
        return any(c.target == region and c.repo == REPO and c.tag == tag for c in list(self.replication.copies))

    # -- the faults ------------------------------------------------------------------------------------

    def inject(self, fault: str, rng: random.Random, record: Callable[[str, str], None],
               later: Callable[[str, Callable[[], None]], None]) -> None:  # fmt: skip
        region = rng.choice(REGIONS)
        if fault in ("acr-kill", "data-endpoint"):
            if region in self.down:
                return
            if fault == "acr-kill":
                self.acr[region].stop()
                how = "SIGKILLed"
            else:
                how = rng.choice(["503", "stopped"])
                self.acr.data[region].set_mode("http_503") if how == "503" else self.acr.data[region].stop()
            self.down[region] = (time.monotonic(), fault)
            name = rng.choice(sorted(self.intent))
            self._scale(name, self.scale[name] + 1)
            record(fault, f"{region} {how}; {NAMESPACE}/{name} scaled out to {self.scale[name]}")

            def heal() -> None:
                if fault == "acr-kill":
                    self.acr[region].heal()
                    self.registry_up_at[region] = time.monotonic()
                else:
                    self.acr.data[region].heal()
                self.down.pop(region, None)
                self._scale(name, self.scale[name] - 1)

            later(f"{region} {fault} healed, {NAMESPACE}/{name} scaled in", heal)
        elif fault == "replication-lag":
            target = rng.choice([r for r in REGIONS if r != SOURCE])
            if SOURCE in self.down and self.down[SOURCE][1] == "acr-kill":
                return  # the user's push would fail: their CI retries later
            lag = rng.uniform(*LAG_SPIKE_SECONDS)
            self.replication.set_lag(target, lag)
            self.tags += 1
            tag = str(self.tags)
            self.nodes.push_pod_image(REPO, tag, regions=[SOURCE], label=tag)
            name = rng.choice(sorted(self.intent))
            image = f"{self.login}/{REPO}:{tag}"
            patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}}
            _retry(lambda: self.apps.patch_namespaced_deployment(name, NAMESPACE, patch))
            self.intent[name], self.changed[name] = image, time.monotonic()
            record(fault, f"{target} lags {lag:.0f}s; {REPO}:{tag} pushed in {SOURCE}, {NAMESPACE}/{name} rolled to it")
            later(f"{target} lags {BASE_LAG:g}s again", lambda: self.replication.set_lag(target, BASE_LAG))

    def _scale(self, name: str, replicas: int) -> None:
        _retry(lambda: self.apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"replicas": replicas}}))
        self.scale[name], self.changed[name] = replicas, time.monotonic()

    def heal_all(self) -> None:
        self.acr.heal()
        for region in REGIONS:
            self.acr.data[region].heal()
            self.replication.set_lag(region, BASE_LAG)
        self.down.clear()

    # -- the checks ------------------------------------------------------------------------------------

    def read(self) -> tuple[list[Any], list[Any]]:
        return self.apps.list_namespaced_deployment(NAMESPACE).items, self.core.list_namespaced_pod(NAMESPACE).items

    def settled(self) -> bool:
        return self.unsettled() == []

    def unsettled(self) -> list[str] | None:
        """What is not settled: templates not on eastus as their users' images, Pods not wanted or not
        Running; None while the API cannot answer."""
        try:
            deployments, pods = self.read()
        except (client.ApiException, OSError):
            return None
        home = self.acr["eastus"].host
        found = []
        for d in deployments:
            image = d.spec.template.spec.containers[0].image
            if image != f"{home}/{self.intent[d.metadata.name].split('/', 1)[1]}":
                found.append(f"{NAMESPACE}/{d.metadata.name}: {image}")
        running = [p for p in pods if _running(p) and p.metadata.deletion_timestamp is None]
        wanted = sum(self.scale.values())
        if not len(pods) == len(running) == wanted:
            waiting = [f"{p.metadata.name}: {_waiting(p)}" for p in pods if not _running(p)]
            found.append(f"{len(running)} of {len(pods)} Pods Running, {wanted} wanted; {waiting[:2]}")
        return found

    def check(self, at: float, checker: Checker, disrupted_at: float, budget: float) -> None:
        deployments, pods = self.read()
        now = time.monotonic()
        for d in deployments:
            name, image = d.metadata.name, d.spec.template.spec.containers[0].image
            wanted = self.intent.get(name)
            self._check_template_move(at, checker, name, image, wanted, now)
            if wanted is not None and image.split("/", 1)[1] != wanted.split("/", 1)[1]:
                checker.violate(f"2 (user edit lost) at {at:.0f}s: {NAMESPACE}/{name} holds {image}, "
                                f"its user's: {wanted}")  # fmt: skip
            self._check_replicated(at, checker, f"template of {NAMESPACE}/{name}", image, now)
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                continue
            image = pod.spec.containers[0].image
            self._check_replicated(at, checker, f"Pod {pod.metadata.name}", image, now)
            if _running(pod):
                continue
            region = self.host_region(image)
            since, why = self.down.get(region or "", (math.inf, ""))
            if now - since > budget and now - disrupted_at > budget:
                checker.violate(f"1 (Pod left on a dead replica) at {at:.0f}s: {pod.metadata.name} waits for "
                                f"{image}, {region} down ({why}) for {now - since:.0f}s")  # fmt: skip
            age = time.time() - _stamp(pod.metadata.creation_timestamp)
            if age > POD_BUDGET_SECONDS:
                checker.violate(f"1 (Pod not running) at {at:.0f}s: {pod.metadata.name} ({image}) created "
                                f"{age:.0f}s ago: {_waiting(pod)}")  # fmt: skip
        self._check_restarts(at, checker, pods)

    def _check_template_move(
        self, at: float, checker: Checker, name: str, image: str, wanted: str | None, now: float
    ) -> None:
        """8: Redirect keeps a template's pin while its replica is down (its new Pods are redirected at
        admission instead); a template that changes rolls its Pods, which may then be replaced."""
        before = self.templates.get(name)
        self.templates[name] = (image, wanted or "")
        if before is None or before[0] == image:
            return
        self.changed[name] = now
        old, new = self.host_region(before[0]), self.host_region(image)
        # A move to a preferred replica (home, once a new tag replicated there) happens whether or not
        # the old one is down; a move away from a down replica to a later one is what Redirect forbids.
        later = new is None or (old is not None and REGIONS.index(new) > REGIONS.index(old))
        if before[1] == wanted and old in self.down and later:
            checker.violate(f"8 (template moved by an outage) at {at:.0f}s: {NAMESPACE}/{name} went from "
                            f"{before[0]} to {image} while {old} is down ({self.down[old][1]})")  # fmt: skip
            self.template_moves_on_outage += 1

    def _check_replicated(self, at: float, checker: Checker, what: str, image: str, now: float) -> None:
        region = self.host_region(image)
        if region is None or self.replicated(image, region):
            return
        if region in self.down or now - self.registry_up_at.get(region, -math.inf) < FAIL_OPEN_SECONDS:
            return  # a HEAD there may have failed: geopin fails open by design
        checker.violate(f"7 (pinned before replicated) at {at:.0f}s: {what} names {image}, not in {region} yet")

    def _check_restarts(self, at: float, checker: Checker, pods: list[Any]) -> None:
        present = {p.metadata.uid for p in pods if p.metadata.deletion_timestamp is None}
        for pod in pods:
            if not _running(pod) or pod.metadata.deletion_timestamp is not None:
                continue
            restarts = pod.status.container_statuses[0].restart_count
            owner = (pod.metadata.labels or {}).get("app", "")
            self.uids_running.add(pod.metadata.uid)
            seen = self.pods_seen.setdefault(pod.metadata.uid, (pod.metadata.name, owner, restarts))
            if restarts > seen[2]:
                checker.violate(f"8 (a Pod restarted) at {at:.0f}s: {pod.metadata.name} restarted {restarts} times")
                self.pods_seen[pod.metadata.uid] = (seen[0], owner, restarts)
        now = time.monotonic()
        for uid, (name, owner, _) in list(self.pods_seen.items()):
            if uid in present:
                continue
            del self.pods_seen[uid]
            # A rollout (its template changed) or a scale-in takes a while; nothing else replaces a Pod.
            if now - self.changed.get(owner, -math.inf) > REPLACE_WINDOW_SECONDS:
                checker.violate(f"8 (a Pod replaced) at {at:.0f}s: {name} of {NAMESPACE}/{owner} is gone; the "
                                f"Deployment last changed {now - self.changed[owner]:.0f}s before")  # fmt: skip

    def final(self, checker: Checker) -> None:
        """3: after the policy's deletion, every template holds exactly its user's image."""
        for d in self.apps.list_namespaced_deployment(NAMESPACE).items:
            image = d.spec.template.spec.containers[0].image
            left = sorted(k for k in (d.metadata.annotations or {}) if k.startswith("geopin.io/"))
            if image != self.intent[d.metadata.name] or left:
                checker.violate(f"3 (intent): {NAMESPACE}/{d.metadata.name} holds {image} {left}, "
                                f"its user's is {self.intent[d.metadata.name]}")  # fmt: skip

    def figures(self) -> dict[str, Any]:
        return {
            "pods_seen_running": len(self.uids_running),
            "tags_pushed": self.tags - 1,
            "copies_replicated": len(self.replication.copies),
        }


def _running(pod: Any) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and statuses[0].state.running is not None


def _waiting(pod: Any) -> str:
    statuses = pod.status.container_statuses or []
    if not statuses or statuses[0].state.waiting is None:
        return str(pod.status.phase)
    waiting = statuses[0].state.waiting
    return f"{waiting.reason}: {(waiting.message or '')[:200]}"


def _stamp(value: datetime | str) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _retry(call: Callable[[], Any]) -> Any:
    from bench.soak_faults import _retry as retry

    return retry(call)
