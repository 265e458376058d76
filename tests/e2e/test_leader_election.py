"""High availability: two operator processes, one Lease; the leader dies mid-failover, the other finishes.

Both replicas watch and index everything; only the Lease holder probes and writes. The leader is
SIGKILLed while it repoints 100 Deployments after an outage: the standby must take the Lease within
15 s and finish the job, with every original intact and no Deployment written twice to westus.
A graceful stop releases the Lease so the successor starts at once.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.clients import Clients
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "ha.azurecr.io"
NAMESPACE = "ha-fleet"
OPERATOR_NAMESPACE = "geopin-system"
COUNT = 100
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"


class HA(Clients):
    def __init__(self, cp: ControlPlane, registries: RegistrySet, ca: CA, workdir: Any) -> None:
        super().__init__(cp)
        self.registries = registries
        self.operators = [
            Operator(cp, workdir / name, user=f"geopin-{name}", env={"HOSTNAME": f"geopin-{name}"})
            for name in ("a", "b")
        ]
        self.ca = ca

    def all_on(self, region: str) -> bool:
        images = self.images(NAMESPACE)
        host = self.registries[region].endpoint
        return len(images) == COUNT and all(image.startswith(f"{host}/") for image in images)

    def holder(self) -> str:
        lease = self.coordination.read_namespaced_lease("geopin", OPERATOR_NAMESPACE)
        return str(lease.spec.holder_identity or "")

    def leader(self) -> Operator:
        holder = self.holder()
        leaders = [op for op in self.operators if op.alive() and op.identity in holder]
        assert len(leaders) == 1, (holder, [op.identity for op in self.operators])
        return leaders[0]


@pytest.fixture(scope="module")
def ha(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    install_crd(control_plane)
    workdir = tmp_path_factory.mktemp("ha")
    for name in ("a", "b"):
        (workdir / name).mkdir()
    with RegistrySet(ca) as registries:
        ha = HA(control_plane, registries, ca, workdir)
        for namespace in (NAMESPACE, OPERATOR_NAMESPACE):
            try:
                ha.core.create_namespace({"metadata": {"name": namespace}})
            except client.ApiException as e:
                if e.status != 409:
                    raise
        for i in range(COUNT):
            ha.apps.create_namespaced_deployment(
                NAMESPACE,
                deployment(f"app-{i}", f"{REGISTRY}/fleet/app-{i}:1"),
            )
        ha.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "ha"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )
        for op in ha.operators:
            op.start("--leader-election", "--operator-namespace", OPERATOR_NAMESPACE)
        yield ha
        for op in ha.operators:
            if not op.alive():
                op.start("--leader-election", "--operator-namespace", OPERATOR_NAMESPACE)
        ha.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "ha")
        wait_until(
            lambda: all(image.startswith(f"{REGISTRY}/") for image in ha.images(NAMESPACE)), timeout=60, what="restored"
        )
        for op in ha.operators:
            op.stop()
        ha.core.delete_namespace(NAMESPACE)
        ha.api.close()


def test_one_leader_writes_and_the_standby_takes_over_mid_failover(ha: HA, control_plane: ControlPlane) -> None:
    wait_until(lambda: ha.all_on("eastus"), timeout=60, what="all pinned to eastus")
    leader = ha.leader()
    standby = next(op for op in ha.operators if op is not leader)
    mark = control_plane.audit_line_count()
    generations = {d.metadata.name: d.metadata.generation for d in ha.apps.list_namespaced_deployment(NAMESPACE).items}
    # Only the leader writes Deployments (the standby watches, indexes and waits).
    assert standby.metric("geopin_replica_healthy", policy="ha", region="eastus") is None

    ha.registries["eastus"].stop()

    def repointing() -> bool:
        moved = sum(image.startswith(ha.registries["westus"].endpoint) for image in ha.images(NAMESPACE))
        return 0 < moved < COUNT

    wait_until(repointing, timeout=60, interval=0.01, what="repointing under way")
    leader.kill()
    killed_at = time.time()
    moved_at_kill = sum(image.startswith(ha.registries["westus"].endpoint) for image in ha.images(NAMESPACE))

    wait_until(lambda: standby.identity in ha.holder(), timeout=30, interval=0.1, what="the standby holds the Lease")
    took_over = time.time() - killed_at
    wait_until(lambda: ha.all_on("westus"), timeout=60, what="the standby finished the failover")
    finished = time.time() - killed_at
    print(
        f"killed the leader with {moved_at_kill}/{COUNT} repointed; "
        f"Lease taken in {took_over:.1f}s, done in {finished:.1f}s"
    )
    assert took_over < 15

    # Each template change bumps metadata.generation exactly once. Counting generations rather than
    # audit lines is deliberate: a patch in flight when the leader died may be committed while its
    # audit record carries an error code (the client's connection was gone), and it still counts.
    after = {d.metadata.name: d.metadata.generation for d in ha.apps.list_namespaced_deployment(NAMESPACE).items}
    twice = {name: (generations[name], gen) for name, gen in after.items() if gen != generations[name] + 1}
    assert not twice, f"each Deployment repointed exactly once (generation before, after): {twice}"

    writers = {
        (event.get("user") or {}).get("username", "")
        for event in control_plane.audit_events(mark)
        if event.get("verb") == "patch"
        and (event.get("objectRef") or {}).get("resource") == "deployments"
        and (event.get("objectRef") or {}).get("namespace") == NAMESPACE
    }
    assert writers <= {leader.user, standby.user}, writers
    for d in ha.apps.list_namespaced_deployment(NAMESPACE).items:
        record = json.loads(d.metadata.annotations["geopin.io/original-images"])
        assert record == {"containers/app": f"{REGISTRY}/fleet/{d.metadata.name}:1"}


def test_graceful_stop_releases_the_lease(ha: HA) -> None:
    ha.registries["eastus"].heal()
    for op in ha.operators:
        if not op.alive():
            op.start("--leader-election", "--operator-namespace", OPERATOR_NAMESPACE)
    wait_until(lambda: ha.holder() != "", timeout=30, what="a leader")
    leader = ha.leader()
    standby = next(op for op in ha.operators if op is not leader)
    stopped_at = time.time()
    leader.stop()
    wait_until(lambda: standby.identity in ha.holder(), timeout=15, interval=0.1, what="immediate successor")
    # Without the release the successor would wait for the 10 s lease to expire.
    assert time.time() - stopped_at < 8, "a released Lease is taken without waiting for it to expire"
    lease = ha.coordination.read_namespaced_lease("geopin", OPERATOR_NAMESPACE)
    renewed = lease.spec.renew_time
    assert isinstance(renewed, datetime)
