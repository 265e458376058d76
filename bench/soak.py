"""Chaos soak: a seeded random schedule of faults, and invariants checked while it runs and at the end.

`python -m bench soak --minutes 20 --seed S` (`make soak`; `make soak-smoke` runs 2 minutes). The
environment: a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with
one real node (containerd and a kubelet), three registry replicas each behind a fault proxy, two
geopin replicas with leader election, two policies (two registries) over 300 Deployments in three
namespaces, and a third registry shaped as ACR (data endpoints, replication) whose Deployments run
Pods on the node (bench/soak_nodes.py). One fault at a time, 3 to 8 s apart, each undone 15 to 40 s
later or at once (bench/soak_faults.py). Users edit, create and delete Deployments meanwhile. Then
everything is healed, the policies are deleted, and every surviving Deployment must be its user's
intent again.

The invariants (bench/soak_checks.py) are read from the objects, the proxies' and registries' state,
the operators' logs and /proc, and the API server's audit log. A violation prints the seed, the fault
timeline and the first bad object, and the run exits 1. The same seed gives the same schedule.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.harness.armserver import ArmReplica, ArmServer, trust_bundle
from tests.harness.faultproxy import FaultProxy
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.msiserver import MsiServer
from tests.harness.objects import deployment, registry_policy
from tests.harness.pki import CA
from tests.harness.procs import free_port
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

from bench import soak_checks
from bench.env import CREATE_THREADS, GROUP, PLURAL, VERSION, say, table, write_result
from bench.soak_faults import Schedule
from bench.soak_nodes import POLICY as NODE_POLICY
from bench.soak_nodes import NodePart

NAME = "soak"
FULL_MINUTES, SMOKE_MINUTES = 20.0, 2.0
REGIONS = ("eastus", "westus", "centralus")
LEASE = "geopin-soak"
# policy -> (registry, its namespaces)
POLICIES = {
    "alpha": ("alpha.azurecr.io", ("soak-a1", "soak-a2")),
    "beta": ("bravo.azurecr.io", ("soak-b1",)),
}
# beta also discovers its replicas in ARM (the fake, through a managed-identity token): ARM can fail.
ARM_POLICY, ARM_REFRESH_SECONDS, ARM_TOKEN = "beta", 30, "soak-arm-token"
ARM_SUBSCRIPTION, ARM_RESOURCE_GROUP = "5b1f7a0e-3c2d-4e8f-9a6b-0c1d2e3f4a5b", "platform-rg"
PER_NAMESPACE = 100
SAMPLE_SECONDS = 2.0
SKIP = "geopin.io/skip"


class SoakEnv:
    """The environment, what the users intend, and what the checker reads."""

    policies = POLICIES
    arm_policy = ARM_POLICY
    policy_names = (*POLICIES, NODE_POLICY)

    def __init__(self, stack: ExitStack, workdir: Path) -> None:
        ca = CA(workdir / "pki")
        self.ca = ca
        # The control plane is the node environment's: kube-scheduler and a real node run contoso's Pods.
        self.nodes = NodePart(stack, ca, workdir)
        self.cp = self.nodes.cp
        self.registries = stack.enter_context(RegistrySet(ca, workdir=workdir / "registries"))
        self.proxies = {r: stack.enter_context(FaultProxy(self.registries[r].endpoint, ca)) for r in REGIONS}
        # A second way to each replica, never faulted: what an SRE moves a policy's endpoint to.
        self.alternates = {r: stack.enter_context(FaultProxy(self.registries[r].endpoint, ca)) for r in REGIONS}
        self.moved: dict[str, set[str]] = {name: set() for name in POLICIES}  # policy -> regions on the alternate
        self.arm = stack.enter_context(ArmServer(
            ca, subscription_id=ARM_SUBSCRIPTION, resource_group=ARM_RESOURCE_GROUP,
            registry_name=POLICIES[ARM_POLICY][0].split(".", 1)[0], token=ARM_TOKEN,
            replicas=[ArmReplica(r) for r in REGIONS],
        ))  # fmt: skip
        msi = stack.enter_context(MsiServer(ARM_TOKEN))
        arm_env = {**msi.env, "SSL_CERT_FILE": str(trust_bundle(ca, workdir))}
        install_crd(self.cp)
        api = stack.enter_context(self.cp.api_client())
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.coordination: Any = client.CoordinationV1Api(api)
        self.operators = [
            Operator(
                self.cp,
                _mkdir(workdir / f"geopin-{i}"),
                user=f"geopin-soak-{i}",
                env={"HOSTNAME": f"soak-{i}", **arm_env},
                names=self.nodes.acr,  # where contoso's names resolve (and its CA is trusted)
            )
            for i in range(2)
        ]
        for operator in self.operators:
            stack.callback(operator.stop)
        # (namespace, name) -> the image its user wants; guarded by `lock` with every user edit and every
        # sample, so that a sample never sees an edit half made.
        self.intent: dict[tuple[str, str], str] = {}
        self.opted_out: dict[tuple[str, str], float] = {}  # (namespace, name) -> since (monotonic)
        self.lock = threading.Lock()
        self.webhook_ports = [free_port() for _ in self.operators]

    def endpoint(self, policy: str, region: str) -> str:
        """The endpoint `policy` names for `region` now."""
        return (self.alternates if region in self.moved[policy] else self.proxies)[region].endpoint

    def policy_of(self, namespace: str) -> str:
        return next(name for name, (_, namespaces) in POLICIES.items() if namespace in namespaces)

    def policy_body(self, name: str, order: tuple[str, ...] = REGIONS) -> dict[str, Any]:
        registry, namespaces = POLICIES[name]
        spec = {
            "registry": registry,
            "region": "eastus",
            "replicas": [{"region": r, "endpoint": self.endpoint(name, r)} for r in order],
            "probe": {
                "caBundle": self.ca.cert_pem.decode(),
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "failureThreshold": 2,
                "failbackDelaySeconds": 5,
            },
            "replicationCheck": False,
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
            ]},
            "failover": {"strategy": "Repoint", "maxRepointsPerSecond": 100},
        }  # fmt: skip
        if name == ARM_POLICY:
            spec["azure"] = {
                "subscriptionId": ARM_SUBSCRIPTION,
                "resourceGroup": ARM_RESOURCE_GROUP,
                "registryName": registry.split(".", 1)[0],
                "refreshSeconds": ARM_REFRESH_SECONDS,
            }
        return registry_policy(name, spec)

    def create(self) -> None:
        """Both geopins, and contoso's Deployments (no Pod yet) and policy."""
        self.core.create_namespace({"metadata": {"name": "geopin-system"}})
        for index, (operator, port) in enumerate(zip(self.operators, self.webhook_ports, strict=True)):
            # Both serve the webhook, as the chart's two Pods do behind its Service.
            operator.spawn(
                "--leader-election", "--lease-name", LEASE, "--webhook-port", str(port), "--arm-endpoint", self.arm.url,
                *self.nodes.webhook_args(index, port),
            )  # fmt: skip
        # While both start: the API server's first RegistryPolicy takes it seconds (it builds the CRD's handler).
        self.nodes.create(self.core, self.apps, self.custom)
        for operator in self.operators:
            operator.wait_started()

    def create_fleet(self) -> None:
        """The 300 Deployments and their two policies: after the node's Pods run, because their first pins
        queue 300 ReplicaSets in kube-controller-manager (20 requests/s), which would hold the node's
        Deployments back for half a minute."""
        made = [
            (namespace, f"app-{i}", f"{registry}/soak/app-{i}:1")
            for registry, namespaces in POLICIES.values()
            for namespace in namespaces
            for i in range(PER_NAMESPACE)
        ]
        for namespace in sorted({namespace for namespace, _, _ in made}):
            self.core.create_namespace({"metadata": {"name": namespace}})
        with ThreadPoolExecutor(CREATE_THREADS, thread_name_prefix="soak-create") as pool:
            list(pool.map(lambda item: self._create_deployment(*item), made))  # before the checker samples
        for name in POLICIES:
            self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, self.policy_body(name))

    def create_deployment(self, namespace: str, name: str, image: str) -> None:
        """A user creates a Deployment."""
        with self.lock:
            self._create_deployment(namespace, name, image)

    def _create_deployment(self, namespace: str, name: str, image: str) -> None:
        body = deployment(name, image, labels={"app": name})
        body["spec"]["replicas"] = 0  # no kubelet here: the templates are what geopin writes
        try:
            self.apps.create_namespaced_deployment(namespace, body)
        except client.ApiException as e:
            if e.status != 409:  # made by an attempt whose answer was lost (the API server restarted)
                raise
        self.intent[(namespace, name)] = image

    def delete_deployment(self, namespace: str, name: str) -> None:
        with self.lock:
            try:
                self.apps.delete_namespaced_deployment(name, namespace)
            except client.ApiException as e:
                if e.status != 404:  # deleted by an attempt whose answer was lost
                    raise
            del self.intent[(namespace, name)]
            self.opted_out.pop((namespace, name), None)

    def opt_out(self, namespace: str, name: str, out: bool) -> None:
        """A user opts a Deployment out of geopin (geopin.io/skip), or back in."""
        patch = {"metadata": {"annotations": {SKIP: "true" if out else None}}}
        with self.lock:
            if (namespace, name) not in self.intent:
                return  # deleted meanwhile by another user
            self.apps.patch_namespaced_deployment(name, namespace, patch)
            if out:
                self.opted_out.setdefault((namespace, name), time.monotonic())
            else:
                self.opted_out.pop((namespace, name), None)

    def edit_image(self, namespace: str, name: str, image: str) -> None:
        """A user's own edit (a strategic merge patch, as kubectl set image sends)."""
        patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}
        with self.lock:
            self.apps.patch_namespaced_deployment(name, namespace, patch)
            self.intent[(namespace, name)] = image

    def templates(self) -> dict[tuple[str, str], tuple[str, dict[str, str]]]:
        """(namespace, name) -> (image, annotations) of every Deployment of the soak."""
        found = {}
        for _, (_, namespaces) in POLICIES.items():
            for namespace in namespaces:
                # As JSON: the client's models take five times the CPU, which the checker would take
                # from the processes under test on a two-core CI machine.
                response = self.apps.list_namespaced_deployment(namespace, _preload_content=False)
                for d in json.loads(response.data)["items"]:
                    found[(namespace, d["metadata"]["name"])] = (
                        d["spec"]["template"]["spec"]["containers"][0]["image"],
                        dict(d["metadata"].get("annotations") or {}),
                    )
        return found

    def holder(self) -> str | None:
        try:
            lease = self.coordination.read_namespaced_lease(LEASE, "geopin-system")
        except soak_checks.UNAVAILABLE:
            return None
        return str(lease.spec.holder_identity or "") or None

    def leader(self) -> Operator | None:
        holder = self.holder() or ""
        return next((o for o in self.operators if o.identity and holder.startswith(o.identity)), None)

    def policy_status(self, policy: str) -> dict[str, Any] | None:
        """`policy`'s status; None when it is absent or the API cannot answer."""
        try:
            body = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
        except soak_checks.UNAVAILABLE:
            return None
        return dict(body.get("status") or {})

    def active_regions(self) -> dict[str, str]:
        found = {}
        for name in self.policy_names:
            try:
                body = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException:
                continue
            found[name] = str((body.get("status") or {}).get("activeRegion") or "")
        return found


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(minutes: float, seed: int) -> int:
    """One soak; 0 when no invariant was violated, else 1."""
    workdir = Path(tempfile.mkdtemp(prefix="gp-soak-"))
    rng = random.Random(seed)
    failed = True  # until the run says otherwise: an exception keeps the workdir too
    try:
        with ExitStack() as stack:
            say(f"soak: seed {seed}, {minutes:g} min; control plane and a node, 3 + 3 replicas, 2 geopins")
            env = SoakEnv(stack, workdir)
            version = str(client.VersionApi(env.core.api_client).get_code().git_version)
            env.create()
            wait_until(env.nodes.settled, timeout=120, interval=0.5, what="contoso's templates pinned to eastus")
            env.nodes.start_pods()
            wait_until(env.nodes.settled, timeout=180, interval=0.5, what="contoso's Pods running on the node")
            say("soak: contoso's Pods run on the node; the 300 Deployments and their policies")
            env.create_fleet()
            checker = soak_checks.Checker(env, seed)
            wait_until(checker.settled, timeout=180, interval=0.5, what="every Deployment pinned to eastus")
            mark = env.cp.audit_line_count()
            schedule = Schedule(env, rng, checker)
            stack.callback(schedule.release)  # before the environment's own callbacks stop everything
            schedule.start(minutes * 60)
            began = time.monotonic()
            while schedule.running():
                checker.sample(time.monotonic() - began)
                schedule.wait(SAMPLE_SECONDS)  # the sampling period, cut short when the faults end
            schedule.join()
            say("soak: faults over; healing everything and waiting for geopin to settle")
            schedule.heal_all()
            checker.settle("healing everything", timeout=120)
            checker.sample(time.monotonic() - began)
            say("soak: deleting the policies: every Deployment must be its user's intent again")
            for name in env.policy_names:
                env.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            wait_until(lambda: not env.active_regions(), timeout=180, interval=0.5, what="every policy gone")
            checker.final(mark)
            figures = checker.figures(schedule, mark)
            _report(figures)
            figures["deployments"] = len(env.intent)
            write_result(NAME, version, {"minutes": minutes, "seed": seed, "deployments": len(env.intent)}, figures)
            if checker.violations:
                checker.explain(schedule)
                return 1
            failed = False
            return 0
    finally:
        if failed:  # the operators' logs, the audit log: what a violation needs to be understood
            say(f"soak: kept {workdir} for the post-mortem")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _report(figures: dict[str, Any]) -> None:
    table(
        "chaos soak: faults injected",
        ["fault", "count"],
        sorted(figures["faults"].items()),
    )
    table(
        "chaos soak: what geopin did, and the invariants",
        ["switches seen", "template writes", "max writes/10 s on one Deployment", "max RSS (MB)",
         "webhook reviews (slowest s)", "ARM outages (reported)", "violations"],
        [[figures["switches"], figures["template_writes"], figures["max_writes_per_window"], figures["max_rss_mb"],
          f"{figures['webhook_reviews']} ({figures['max_webhook_answer_seconds']})",
          f"{figures['arm_outages']} ({figures['arm_outages_reported']})",
          sum(figures["violations_per_invariant"].values())]],
    )  # fmt: skip
