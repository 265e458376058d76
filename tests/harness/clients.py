"""The admin's typed API clients on one connection, as most end-to-end tests use them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes import client

if TYPE_CHECKING:
    from tests.harness.controlplane import ControlPlane


class Clients:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.api: Any = cp.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.coordination: Any = client.CoordinationV1Api(self.api)
        self.rbac: Any = client.RbacAuthorizationV1Api(self.api)

    def images(self, namespace: str) -> list[str]:
        """The first container's image of every Deployment in ``namespace``."""
        deployments = self.apps.list_namespaced_deployment(namespace).items
        return [d.spec.template.spec.containers[0].image for d in deployments]
