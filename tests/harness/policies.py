"""One RegistryPolicy by name, through the API: create, patch, delete (waiting for the restore), status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from tests.harness.objects import registry_policy
from tests.harness.waiting import wait_until

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"


class PolicyClient:
    def __init__(self, api: Any, name: str) -> None:
        self.custom: Any = client.CustomObjectsApi(api)
        self.name = name

    def create(self, spec: Mapping[str, Any]) -> None:
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, registry_policy(self.name, spec))

    def patch(self, spec: Mapping[str, Any]) -> None:
        self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, self.name, {"spec": spec})

    def exists(self) -> bool:
        try:
            self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.name)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def delete(self, timeout: float = 60) -> None:
        """Delete it and wait until it is gone: its finalizer has restored every workload."""
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, self.name)
        except client.ApiException as e:
            if e.status != 404:
                raise
        wait_until(lambda: not self.exists(), timeout=timeout, what="policy deleted (restore finished)")

    def status(self) -> dict[str, Any]:
        body = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.name)
        return dict(body.get("status") or {})

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), None)
