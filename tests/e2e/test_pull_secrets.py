"""pullSecrets: Report and Extend, with real Secrets and the kubelet's matching rules.

Report: a workload whose pull secret is keyed by the global host gets a PullSecretMissingRegionalHost
Event once it points at a regional host; one whose secret has the regional hosts does not.
Extend: geopin creates a sibling Secret with the global host's credentials for every regional host,
references it in the same patch as the images, and on restore drops the reference and deletes it.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA
    from tests.harness.registries import RegistrySet

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
REGISTRY = "creds.azurecr.io"
NAMESPACE = "creds"


def dockerconfig(*hosts: str) -> dict[str, str]:
    auth = base64.b64encode(b"puller:s3cret").decode()
    document = {"auths": {host: {"auth": auth} for host in hosts}}
    return {".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()}


def test_report_and_extend(
    control_plane: ControlPlane, registries: RegistrySet, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    install_crd(control_plane)
    api: Any = control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    endpoints = {r: registries[r].endpoint for r in ("eastus", "westus")}
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    for name, hosts in {"global-only": (REGISTRY,), "regional": tuple(endpoints.values())}.items():
        core.create_namespaced_secret(
            NAMESPACE,
            {"metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson", "data": dockerconfig(*hosts)},
        )
    for name, secret in {"app-global": "global-only", "app-regional": "regional"}.items():
        apps.create_namespaced_deployment(
            NAMESPACE,
            deployment(name, f"{REGISTRY}/team/{name}:1", pod_spec={"imagePullSecrets": [{"name": secret}]}),
        )
    operator = Operator(control_plane, tmp_path_factory.mktemp("pull-secret-operator"))
    operator.start()
    policy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": "creds"},
        "spec": {
            "registry": REGISTRY,
            "region": "eastus",
            "replicas": [{"region": r, "endpoint": e} for r, e in endpoints.items()],
            "probe": {"caBundle": ca.cert_pem.decode()},
            "replicationCheck": False,
            "pullSecrets": "Report",
        },
    }

    def events(name: str) -> list[Any]:
        items = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
        return [e for e in items if e.reason == "PullSecretMissingRegionalHost"]

    def pull_secrets(name: str) -> list[str]:
        spec = apps.read_namespaced_deployment(name, NAMESPACE).spec.template.spec
        return [s.name for s in spec.image_pull_secrets or []]

    def image(name: str) -> str:
        return str(apps.read_namespaced_deployment(name, NAMESPACE).spec.template.spec.containers[0].image)

    try:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
        east = endpoints["eastus"]
        wait_until(
            lambda: image("app-global") == f"{east}/team/app-global:1" and image("app-regional").startswith(east),
            timeout=60,
            what="both pinned",
        )
        warning = wait_until(lambda: events("app-global"), timeout=30, what="the missing-host warning")[0]
        assert east in warning.message
        assert "global-only" in warning.message
        assert events("app-regional") == [], "the regional keys cover the endpoint"

        # Extend: a sibling Secret covers the regional hosts and is referenced by the template.
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "creds", {"spec": {"pullSecrets": "Extend"}})
        sibling = "global-only-geopin-regional"
        wait_until(
            lambda: pull_secrets("app-global") == ["global-only", sibling], timeout=60, what="sibling referenced"
        )
        data = core.read_namespaced_secret(sibling, NAMESPACE).data[".dockerconfigjson"]
        auths = json.loads(base64.b64decode(data))["auths"]
        assert set(auths) == set(endpoints.values())
        assert base64.b64decode(auths[east]["auth"]) == b"puller:s3cret"
        assert (
            core.read_namespaced_secret(sibling, NAMESPACE).metadata.labels["app.kubernetes.io/managed-by"] == "geopin"
        )

        # Restore: the reference goes and so does the Secret.
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "creds")
        wait_until(lambda: pull_secrets("app-global") == ["global-only"], timeout=60, what="reference removed")
        assert image("app-global") == f"{REGISTRY}/team/app-global:1"

        def sibling_gone() -> bool:
            try:
                core.read_namespaced_secret(sibling, NAMESPACE)
            except client.ApiException as e:
                return bool(e.status == 404)
            return False

        wait_until(sibling_gone, timeout=30, what="the sibling Secret deleted")
    finally:
        operator.stop()
        core.delete_namespace(NAMESPACE)
        api.close()
