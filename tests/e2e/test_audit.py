"""Audit mode computes everything and writes nothing: status, Events and metrics say what would change."""

from __future__ import annotations

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

REGISTRY = "audit.azurecr.io"
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"


def test_audit_mode_reports_and_writes_nothing(
    control_plane: ControlPlane, registries: RegistrySet, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    install_crd(control_plane)
    api: Any = control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": "audit"}})
    images = {f"app-{i}": f"{REGISTRY}/team/app-{i}:1" for i in range(3)}
    for name, image in images.items():
        apps.create_namespaced_deployment(
            "audit",
            deployment(name, image),
        )
    operator = Operator(control_plane, tmp_path_factory.mktemp("audit-operator"))
    operator.start()
    mark = control_plane.audit_line_count()
    try:
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RegistryPolicy",
                "metadata": {"name": "audit"},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "mode": "Audit",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )

        def ready() -> dict[str, Any] | None:
            status: dict[str, Any] = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "audit").get("status", {})
            return status if status.get("workloads", {}).get("wouldRewrite") == 3 else None

        status = wait_until(ready, timeout=60, what="status counts three workloads that would be rewritten")
        assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "Audit"
        assert status["workloads"]["pinned"] == 0

        east = registries["eastus"].endpoint

        def events() -> list[Any]:
            return [e for e in core.list_namespaced_event("audit").items if e.reason == "AuditWouldRewrite"]

        wait_until(lambda: len(events()) == 3, timeout=30, what="three AuditWouldRewrite Events")
        found = events()
        assert all(f"-> {east}/team/" in e.message for e in found)
        assert (
            operator.metric("geopin_workload_rewrites_total", policy="audit", kind="Deployment", result="audit") or 0
        ) == 3
        # Nothing was written to any workload, and every image is still the original.
        assert control_plane.audit_writes(mark, "deployments", operator.user) == 0
        for name, image in images.items():
            body = apps.read_namespaced_deployment(name, "audit")
            assert body.spec.template.spec.containers[0].image == image
            assert "geopin.io/original-images" not in (body.metadata.annotations or {})

        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "audit")
        wait_until(
            lambda: (
                not [
                    p
                    for p in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
                    if p["metadata"]["name"] == "audit"
                ]
            ),
            timeout=30,
            what="policy gone",
        )
        assert control_plane.audit_writes(mark, "deployments", operator.user) == 0
    finally:
        operator.stop()
        core.delete_namespace("audit")
        api.close()
