"""The harness itself, proven against the real processes it starts."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from kubernetes import client

from tests.harness import oci
from tests.harness.controlplane import ADMIN_USER, REGION_LABEL, WRITE_VERBS, ControlPlane
from tests.harness.registries import Registry
from tests.harness.replication import ReplicationEmulator
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kubernetes.client import ApiClient

    from tests.harness.pki import CA
    from tests.harness.registries import RegistrySet

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def node_regions(api: ApiClient) -> dict[str, str]:
    regions: dict[str, str] = {}
    for node in client.CoreV1Api(api).list_node().items:
        assert node.metadata is not None
        assert node.metadata.name is not None
        regions[node.metadata.name] = (node.metadata.labels or {}).get(REGION_LABEL, "")
    return regions


@pytest.fixture
def namespace(kube: ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    name = unique("e2e")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


# -- control plane --------------------------------------------------------------------------------


def test_control_plane_started_in_time(control_plane: ControlPlane) -> None:
    assert control_plane.startup_seconds is not None
    print(f"control plane startup: {control_plane.startup_seconds:.1f}s")
    assert control_plane.kubeconfig.is_file()
    assert all(p.alive() for p in control_plane.processes)


def test_rbac_denies_unprivileged_service_account_token(
    control_plane: ControlPlane, kube: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token_request = core.create_namespaced_service_account_token(
        "nobody",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)),
    )
    assert token_request.status is not None
    token = token_request.status.token

    with control_plane.api_client(token=token) as as_nobody:
        # Authenticated (so a 403 below is RBAC speaking, not a bad token)...
        review = client.AuthenticationV1Api(as_nobody).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status is not None
        assert review.status.user_info is not None
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        # ...and denied.
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
        assert denied.value.status == 403
    # The admin may.
    assert core.list_namespaced_pod(namespace).items == []


def test_nodes_carry_region_labels(control_plane: ControlPlane, kube: ApiClient) -> None:
    def regions() -> dict[str, str]:
        return node_regions(kube)

    assert regions() == dict.fromkeys(control_plane.node_names, "eastus")
    try:
        control_plane.set_node_regions(["eastus", "westus", "westus"])
        assert sorted(regions().values()) == ["eastus", "westus", "westus"]
    finally:
        control_plane.set_node_regions("eastus")
    assert set(regions().values()) == {"eastus"}


def test_controller_manager_makes_replicaset_and_pods(kube: ApiClient, namespace: str) -> None:
    labels = {"app": "hello"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="hello"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example.azurecr.io/hello:1")]),
            ),
        ),
    )
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(namespace, deployment)

    def owned_replicasets() -> list[client.V1ReplicaSet]:
        return [
            rs
            for rs in apps.list_namespaced_replica_set(namespace).items
            if rs.metadata is not None
            and any(ref.kind == "Deployment" and ref.name == "hello" for ref in rs.metadata.owner_references or [])
        ]

    replicasets = wait_until(owned_replicasets, timeout=30, what="a ReplicaSet for the Deployment")
    template = replicasets[0].spec.template if replicasets[0].spec else None
    assert template is not None
    assert template.spec is not None
    assert template.spec.containers[0].image == "example.azurecr.io/hello:1"
    # The ReplicaSet controller creates the Pods (there is no scheduler: they stay Pending).
    core = client.CoreV1Api(kube)
    wait_until(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=hello").items) == 2,
        timeout=30,
        what="two Pods from the ReplicaSet",
    )


def test_audit_log_counts_admin_writes(control_plane: ControlPlane, kube: ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    mark = control_plane.audit_line_count()
    name = unique("audited")
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"a": "1"})
    )
    core.patch_namespaced_config_map(name, namespace, {"data": {"a": "2"}})
    core.read_namespaced_config_map(name, namespace)  # a read: not logged
    core.delete_namespaced_config_map(name, namespace)

    def writes(verbs: frozenset[str] = WRITE_VERBS) -> int:
        return control_plane.audit_writes(
            since_line=mark, resource="configmaps", user=ADMIN_USER, namespace=namespace, verbs=verbs
        )

    wait_until(lambda: writes() >= 3, timeout=10, what="three audited configmap writes")
    assert writes() == 3
    assert writes(verbs=frozenset({"create"})) == 1
    assert writes(verbs=frozenset({"patch"})) == 1
    assert writes(verbs=frozenset({"delete"})) == 1
    # Writes by other users (the controllers filling the new namespace) are told apart.
    assert control_plane.audit_writes(since_line=mark, resource="configmaps", user="nobody") == 0


def test_extra_apiserver_args_and_node_regions(ca: CA) -> None:
    with ControlPlane(
        ca=ca,
        node_regions=("westus", "centralus"),
        extra_apiserver_args=["--runtime-config=autoscaling/v2=false"],
        start_controller_manager=False,
    ) as cp:
        with cp.api_client() as api:
            assert sorted(node_regions(api).values()) == ["centralus", "westus"]
        with httpx.Client(verify=ca.ssl_context(cp.admin)) as http:
            assert http.get(f"{cp.url}/apis/autoscaling/v2").status_code == 404
            assert http.get(f"{cp.url}/apis/autoscaling/v1").status_code == 200
        workdir = cp.workdir
    assert not workdir.exists()
    assert not any(p.alive() for p in cp.processes)


# -- registries -----------------------------------------------------------------------------------


def test_pushed_manifest_is_served_over_tls_verified_by_run_ca(ca: CA, registries: RegistrySet) -> None:
    eastus = registries["eastus"]
    image = oci.build_image({"hello.txt": unique("content").encode()})
    repo = unique("e2e/tls")
    pushed = oci.push_image(eastus.endpoint, repo, "v1", image, verify=ca.ssl_context())
    assert pushed == image.digest
    assert oci.manifest_digest(eastus.endpoint, repo, "v1", verify=ca.ssl_context()) == image.digest
    with eastus.client() as http:
        fetched = oci.get_manifest(http, repo, "v1")
    assert fetched == (image.manifest, oci.OCI_MANIFEST)
    # The system trust store does not know the run's CA: TLS really is verified.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        oci.manifest_digest(eastus.endpoint, repo, "v1")


def test_registry_basic_auth(ca: CA) -> None:
    with Registry("authed", ca, auth=("alice", "s3cret")) as registry:
        with registry.client(authenticated=False) as anonymous:
            assert anonymous.get("/v2/").status_code == 401
        digest = oci.push_image(registry.endpoint, "e2e/authed", "v1", verify=ca.ssl_context(), auth=registry.auth)
        assert oci.manifest_digest(
            registry.endpoint, "e2e/authed", "v1", verify=ca.ssl_context(), auth=registry.auth
        ) == (digest)
        with pytest.raises(oci.RegistryAPIError) as unauthorized:
            oci.manifest_digest(registry.endpoint, "e2e/authed", "v1", verify=ca.ssl_context())
        assert unauthorized.value.status_code == 401


def test_sigstop_times_out_and_sigcont_recovers(fault_registry: Registry) -> None:
    fault_registry.pause()
    assert fault_registry.state == "paused"
    with fault_registry.client(timeout=1.0) as http, pytest.raises(httpx.TimeoutException):
        http.get("/v2/")
    fault_registry.resume()
    with fault_registry.client(timeout=5.0) as http:
        assert http.get("/v2/").status_code == 200


def test_sigkill_refuses_connections_and_restart_keeps_data(ca: CA, fault_registry: Registry) -> None:
    repo = unique("e2e/kill")
    digest = oci.push_image(fault_registry.endpoint, repo, "v1", verify=ca.ssl_context())
    fault_registry.stop()
    assert fault_registry.state == "stopped"
    with fault_registry.client(timeout=5.0) as http, pytest.raises(httpx.ConnectError, match="refused"):
        http.get("/v2/")
    fault_registry.restart()
    assert oci.manifest_digest(fault_registry.endpoint, repo, "v1", verify=ca.ssl_context()) == digest


def test_a_restarted_registry_serves_its_own_certificate_after_a_namesake_was_issued_one(ca: CA) -> None:
    """A session's CA issues many registries named "eastus" (hosts differ): restarting the first one
    must not load a namesake's certificate (its replica then failed every handshake by name)."""
    name = unique("twin")
    with Registry(name, ca, host="twin.example.test", ip="127.0.0.1") as first:
        with Registry(name, ca, host="other.example.test", ip="127.0.0.1"):
            pass
        first.restart()
        with first.client(timeout=5.0) as http:
            assert http.get("/v2/").status_code == 200


# -- replication ----------------------------------------------------------------------------------


def test_replication_copies_to_westus_only_after_its_lag(ca: CA, registries: RegistrySet) -> None:
    lag = 3.0
    eastus, westus = registries["eastus"], registries["westus"]
    repo = unique("e2e/replicated")
    image = oci.build_image({"hello.txt": repo.encode()})

    def on_westus() -> str | None:
        return oci.manifest_digest(westus.endpoint, repo, "v1", verify=ca.ssl_context())

    with ReplicationEmulator(eastus, [westus], {"westus": lag}) as replication:
        pushed_at = time.monotonic()
        oci.push_image(eastus.endpoint, repo, "v1", image, verify=ca.ssl_context())
        # The emulator has noticed the tag and holds it back...
        wait_until(
            lambda: ("westus", repo, "v1") in replication.pending(),
            timeout=lag / 2,
            interval=0.02,
            what="the emulator to notice the push",
        )
        # ...so westus does not have it yet.
        assert on_westus() is None
        assert time.monotonic() - pushed_at < lag
        assert wait_until(on_westus, timeout=lag + 10, what="the image on westus") == image.digest
        arrived_after = time.monotonic() - pushed_at
    assert arrived_after >= lag
    copy = next(c for c in replication.copies if c.repo == repo)
    assert copy.target == "westus"
    assert copy.copied_at - copy.seen_at >= lag


def test_replicate_now_ignores_lag(ca: CA, registries: RegistrySet) -> None:
    eastus, westus = registries["eastus"], registries["westus"]
    repo = unique("e2e/now")
    digest = oci.push_image(eastus.endpoint, repo, "v1", verify=ca.ssl_context())
    replication = ReplicationEmulator(eastus, [westus], lags=3600)
    assert oci.manifest_digest(westus.endpoint, repo, "v1", verify=ca.ssl_context()) is None
    replication.replicate_now()
    assert oci.manifest_digest(westus.endpoint, repo, "v1", verify=ca.ssl_context()) == digest


def test_a_lag_that_drops_drains_the_backlog(ca: CA, registries: RegistrySet) -> None:
    eastus, westus = registries["eastus"], registries["westus"]
    repo = unique("e2e/drain")

    def on_westus() -> str | None:
        return oci.manifest_digest(westus.endpoint, repo, "v1", verify=ca.ssl_context())

    with ReplicationEmulator(eastus, [westus], {"westus": 3600}) as replication:
        digest = oci.push_image(eastus.endpoint, repo, "v1", verify=ca.ssl_context())
        wait_until(lambda: ("westus", repo, "v1") in replication.pending(), timeout=10, interval=0.02,
                   what="the emulator to notice the push")  # fmt: skip
        assert on_westus() is None
        replication.set_lag("westus", 0.5)  # the spike is over
        assert wait_until(on_westus, timeout=10, what="the backlog on westus") == digest
    copy = next(c for c in replication.copies if c.repo == repo)
    assert copy.copied_at - copy.seen_at < 3600
