"""Split brain: one writer at every moment, whatever a policy, the API server or the process does.

Two `geopin run` processes share one Lease. Besides a working policy with 60 Deployments there is a
policy whose probe loop cannot start (its credentials Secret holds no docker config). Three ways to
lose or change the leader, in sequence:

1. The standby takes over (SIGKILL of the leader) with the broken policy in its book: its start must
   contain the failure to that policy (status, Event) and keep renewing the Lease.
2. The leader can no longer renew (its RBAC on Leases is revoked) in the middle of a failover: it must
   stop writing before the other can take the Lease.
3. The leader freezes (SIGSTOP) in the middle of a failback past the Lease's duration, and wakes up
   (SIGCONT) with workers, Events and statuses in hand after the other took over.

The judge is the API server's audit log: every write of a Deployment, of a policy status or of an
Event by either operator must come from the identity that renewed the Lease last, less than the
Lease's duration (10 s) earlier. Lease renewals are themselves audited writes, so the log alone says
who held it at every moment. One exception is unavoidable in phase 3 and is bounded: a request that
the frozen process had already let through (the fence is checked right before sending) can reach the
API server after it wakes. Kubernetes has no fencing token to refuse it; the guarded patch makes it
harmless (it applies only to the object exactly as it was decided), and the test checks that such
writes arrived within a second of the wake-up, no more of them than there are workers, and that every
Deployment was still written exactly once per move.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client, watch

from tests.harness.clients import Clients
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "split.azurecr.io"
BROKEN_REGISTRY = "broken.azurecr.io"
NAMESPACE = "split-fleet"
OPERATOR_NAMESPACE = "geopin-system"
LEASE = "geopin-split-brain"
LEASE_SECONDS = 10.0  # LeaderElector's default lease duration
WORKERS = 8  # geopin run's default --workers
COUNT = 60
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
OPERATORS_GROUP = "geopin-split-operators"
KOPF_AGENT = "kopf/"  # Kopf's own writes (finalizers, its handler Events) happen on every replica by design


def policy(name: str, registry: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": name},
        "spec": {"registry": registry, "region": "eastus", "replicationCheck": False, **spec},
    }


def rbac(pair: Pair) -> None:
    """Everything an operator may need, except Leases: each gets those through its own RoleBinding."""
    rbac_api = pair.rbac
    groups = ["", "apps", "batch", GROUP, "admissionregistration.k8s.io", "apiextensions.k8s.io", "events.k8s.io"]
    rules = [{"apiGroups": groups, "resources": ["*"], "verbs": ["*"]}]
    rbac_api.create_cluster_role({"metadata": {"name": OPERATORS_GROUP}, "rules": rules})
    rbac_api.create_cluster_role_binding(
        {
            "metadata": {"name": OPERATORS_GROUP},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATORS_GROUP},
            "subjects": [{"kind": "Group", "name": OPERATORS_GROUP, "apiGroup": "rbac.authorization.k8s.io"}],
        }
    )
    lease_rules = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}]
    rbac_api.create_namespaced_role(OPERATOR_NAMESPACE, {"metadata": {"name": LEASE}, "rules": lease_rules})
    for op in pair.operators:
        grant_lease(pair, op)


def grant_lease(pair: Pair, op: Operator) -> None:
    pair.rbac.create_namespaced_role_binding(
        OPERATOR_NAMESPACE,
        {
            "metadata": {"name": f"{LEASE}-{op.user}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE},
            "subjects": [{"kind": "User", "name": op.user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )


def revoke_lease(pair: Pair, op: Operator) -> None:
    pair.rbac.delete_namespaced_role_binding(f"{LEASE}-{op.user}", OPERATOR_NAMESPACE)


class Pair(Clients):
    def __init__(self, cp: ControlPlane, registries: RegistrySet, workdir: Path) -> None:
        super().__init__(cp)
        self.registries = registries
        self.operators = [
            Operator(
                cp,
                workdir / name,
                user=f"geopin-split-{name}",
                env={"HOSTNAME": f"geopin-split-{name}"},
                groups=(OPERATORS_GROUP,),
            )
            for name in ("a", "b")
        ]

    def start(self, op: Operator) -> None:
        op.start("--leader-election", "--lease-name", LEASE, "--operator-namespace", OPERATOR_NAMESPACE)

    def all_on(self, region: str) -> bool:
        images = self.images(NAMESPACE)
        host = self.registries[region].endpoint
        return len(images) == COUNT and all(image.startswith(f"{host}/") for image in images)

    def first_move_to(self, region: str, timeout: float) -> None:
        """Return once a Deployment's image is on ``region``: a watch, not polling, because a repoint of
        60 Deployments by 8 workers can finish between two listings on a loaded machine."""
        host = f"{self.registries[region].endpoint}/"
        listing = self.apps.list_namespaced_deployment(NAMESPACE)
        if any(d.spec.template.spec.containers[0].image.startswith(host) for d in listing.items):
            return
        stream = watch.Watch()
        for event in stream.stream(
            self.apps.list_namespaced_deployment,
            NAMESPACE,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=int(timeout),
        ):
            if event["object"].spec.template.spec.containers[0].image.startswith(host):
                stream.stop()
                return
        raise WaitTimeout(f"no Deployment moved to {region} within {timeout:.0f}s")

    def generations(self) -> dict[str, int]:
        return {d.metadata.name: d.metadata.generation for d in self.apps.list_namespaced_deployment(NAMESPACE).items}

    def lease(self) -> Any:
        return self.coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec

    def holder(self) -> Operator | None:
        """Who holds the Lease; None before the first operator has made it (its health endpoint answers
        before it campaigns)."""
        try:
            holder = str(self.lease().holder_identity or "")
        except client.ApiException as e:
            if e.status != 404:
                raise
            return None
        return next((op for op in self.operators if holder and op.identity in holder), None)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        body = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


@pytest.fixture(scope="module")
def pair(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    install_crd(control_plane)
    workdir = tmp_path_factory.mktemp("split")
    for name in ("a", "b"):
        (workdir / name).mkdir()
    with RegistrySet(ca) as registries:
        pair = Pair(control_plane, registries, workdir)
        for namespace in (NAMESPACE, OPERATOR_NAMESPACE):
            try:
                pair.core.create_namespace({"metadata": {"name": namespace}})
            except client.ApiException as e:
                if e.status != 409:
                    raise
        rbac(pair)
        for i in range(COUNT):
            pair.apps.create_namespaced_deployment(NAMESPACE, deployment(f"app-{i}", f"{REGISTRY}/fleet/app-{i}:1"))
        # Readable by geopin, but not a pull secret: the probe loop of the policy naming it cannot start.
        pair.core.create_namespaced_secret(
            OPERATOR_NAMESPACE,
            {
                "metadata": {"name": "split-broken-credentials"},
                "type": "Opaque",
                "data": {"token": base64.b64encode(b"not a docker config").decode()},
            },
        )
        replicas = [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")]
        probe = {"caBundle": ca.cert_pem.decode(), "failbackDelaySeconds": 0}
        fleet = policy("split-fleet", REGISTRY, {"replicas": replicas, "probe": probe})
        pair.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, fleet)
        broken = {
            "replicas": [{"region": "eastus", "endpoint": registries["centralus"].endpoint}],
            "probe": {"caBundle": ca.cert_pem.decode()},
            "credentials": {"secretRef": {"namespace": OPERATOR_NAMESPACE, "name": "split-broken-credentials"}},
        }
        pair.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, policy("split-broken", BROKEN_REGISTRY, broken)
        )
        yield pair
        rbac_api = pair.rbac
        for op in pair.operators:
            op.resume()
            if not op.alive():
                pair.start(op)
        for name in ("split-fleet", "split-broken"):
            pair.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        wait_until(
            lambda: all(i.startswith(f"{REGISTRY}/") for i in pair.images(NAMESPACE)), timeout=60, what="restored"
        )
        for op in pair.operators:
            op.stop()
        pair.core.delete_namespace(NAMESPACE)
        pair.core.delete_namespaced_secret("split-broken-credentials", OPERATOR_NAMESPACE)
        for op in pair.operators:
            try:
                revoke_lease(pair, op)
            except client.ApiException as e:
                if e.status != 404:
                    raise
        rbac_api.delete_namespaced_role(LEASE, OPERATOR_NAMESPACE)
        rbac_api.delete_cluster_role_binding(OPERATORS_GROUP)
        rbac_api.delete_cluster_role(OPERATORS_GROUP)
        pair.api.close()


def renews(pair: Pair, holder: Operator, times: int) -> None:
    """The holder's election loop is alive: the Lease's renewTime moves ``times`` times, holder unchanged."""
    for _ in range(times):
        before = pair.lease().renew_time

        def renewed(before: datetime = before) -> bool:
            return bool(pair.lease().renew_time != before)

        wait_until(renewed, timeout=LEASE_SECONDS, what="a Lease renewal")
        assert pair.holder() is holder


def when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def writes_outside_the_lease(events: list[dict[str, Any]], users: set[str]) -> list[tuple[float, str, str]]:
    """(time, user, what) of each write by an operator that did not surely hold the Lease, by the audit log."""
    held: tuple[str, float] | None = None  # (user, time) of the last successful Lease write
    wrong: list[tuple[float, str, str]] = []
    for event in sorted(events, key=when):
        user = (event.get("user") or {}).get("username", "")
        ref = event.get("objectRef") or {}
        if user not in users:
            continue
        if ref.get("resource") == "leases" and ref.get("name") == LEASE:
            if 200 <= (event.get("responseStatus") or {}).get("code", 0) < 300:
                held = (user, when(event))
            continue
        leader_only = (
            (ref.get("resource") == "deployments" and ref.get("namespace") == NAMESPACE)
            or (ref.get("resource") == PLURAL and ref.get("subresource") == "status")
            or (ref.get("resource") == "events" and not str(event.get("userAgent", "")).startswith(KOPF_AGENT))
        )
        if not leader_only:
            continue
        what = f"{event['requestReceivedTimestamp']} {event['verb']} {ref.get('resource')}/{ref.get('name')}"
        if held is None or held[0] != user:
            wrong.append((when(event), user, f"{what}: the Lease was {held[0] if held else 'nobody'}'s"))
        elif when(event) - held[1] >= LEASE_SECONDS:
            wrong.append((when(event), user, f"{what}: its last renewal was {when(event) - held[1]:.1f}s earlier"))
    return wrong


def judge(control_plane: ControlPlane, pair: Pair, mark: int) -> list[tuple[float, str, str]]:
    return writes_outside_the_lease(control_plane.audit_events(mark), {op.user for op in pair.operators})


def test_a_policy_that_cannot_start_never_leaves_two_writers(pair: Pair, control_plane: ControlPlane) -> None:
    first, second = pair.operators
    mark = control_plane.audit_line_count()
    pair.start(first)
    wait_until(lambda: pair.holder() is first, timeout=30, what="the first operator holds the Lease")
    wait_until(lambda: pair.all_on("eastus"), timeout=60, what="all pinned to eastus")
    pair.start(second)

    # 1. The standby takes over with the broken policy already in its book.
    first.kill()
    wait_until(lambda: pair.holder() is second, timeout=30, interval=0.2, what="the standby holds the Lease")
    renews(pair, second, 3)
    wait_until(
        lambda: (pair.condition("split-broken", "Ready") or {}).get("reason") == "ProbeSetupFailed",
        timeout=30,
        what="the broken policy reports why its probes did not start",
    )
    ready = pair.condition("split-broken", "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ".dockerconfigjson" in ready["message"], ready
    events = pair.core.list_namespaced_event("default", field_selector="involvedObject.name=split-broken").items
    assert any(e.reason == "ProbeSetupFailed" and e.type == "Warning" for e in events), [e.reason for e in events]
    fleet_ready = pair.condition("split-fleet", "Ready")
    assert fleet_ready is not None
    assert fleet_ready["status"] == "True", fleet_ready
    pair.start(first)  # back as a standby
    renews(pair, second, 1)

    # 2. The leader loses the right to renew in the middle of a failover.
    generations = pair.generations()
    pair.registries["eastus"].stop()
    pair.first_move_to("westus", timeout=60)  # repointing under way
    revoke_lease(pair, second)
    wait_until(lambda: pair.holder() is first, timeout=30, interval=0.2, what="the other operator takes the Lease")
    wait_until(lambda: pair.all_on("westus"), timeout=60, what="the failover finished")
    assert "could not renew in time; stepping down" in second.log()
    wrong = judge(control_plane, pair, mark)
    assert not wrong, "writes by an operator that did not hold the Lease:\n" + "\n".join(w[2] for w in wrong[:20])
    moved = {name: (generations[name], gen) for name, gen in pair.generations().items() if gen != generations[name] + 1}
    assert not moved, f"each Deployment repointed exactly once (generation before, after): {moved}"

    # 3. The leader freezes in the middle of a failback, past the Lease's duration, and wakes up.
    grant_lease(pair, second)
    generations = pair.generations()
    pair.registries["eastus"].restart()
    pair.first_move_to("eastus", timeout=60)  # failback under way
    first.pause()
    wait_until(lambda: pair.holder() is second, timeout=30, interval=0.2, what="the other operator takes the Lease")
    woke = time.time()
    first.resume()
    wait_until(lambda: pair.all_on("eastus"), timeout=60, what="the failback finished")
    renews(pair, second, 2)  # the woken one stepped down quietly; the new leader stays
    wrong = judge(control_plane, pair, mark)  # the whole run: the Lease's history starts at the first mark
    in_flight = [w for w in wrong if w[1] == first.user and woke - 0.1 <= w[0] <= woke + 1.0]
    assert len(in_flight) <= WORKERS, in_flight
    others = [w for w in wrong if w not in in_flight]
    assert not others, "writes by an operator that did not hold the Lease:\n" + "\n".join(w[2] for w in others[:20])
    moved = {name: (generations[name], gen) for name, gen in pair.generations().items() if gen != generations[name] + 1}
    assert not moved, f"each Deployment moved back exactly once (generation before, after): {moved}"
    print(f"requests already let through when the leader froze, received after it woke: {len(in_flight)}")
    for d in pair.apps.list_namespaced_deployment(NAMESPACE).items:
        record = json.loads(d.metadata.annotations["geopin.io/original-images"])
        assert record == {"containers/app": f"{REGISTRY}/fleet/{d.metadata.name}:1"}
