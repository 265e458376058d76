"""The RegistryPolicy resource: where it lives in the API (the CRD in deploy/crds says the same)."""

from __future__ import annotations

from typing import Any

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "involved_policy"]

GROUP, VERSION, PLURAL, KIND = "geopin.io", "v1alpha1", "registrypolicies", "RegistryPolicy"


def involved_policy(name: str, uid: str) -> dict[str, Any]:
    """A RegistryPolicy as the object an Event is about."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name, "uid": uid}}
