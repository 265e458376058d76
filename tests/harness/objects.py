"""Bodies of the objects the tests and benchmarks create, written once."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["deployment", "pull_secret", "registry_policy"]


def deployment(
    name: str,
    image: str,
    *,
    labels: Mapping[str, str] | None = None,
    pod_spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment with no replicas and one container ``app`` running ``image``.

    ``labels``: the Deployment's own labels (none unless given); ``pod_spec``: more pod spec fields.
    """
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {**(pod_spec or {}), "containers": [{"name": "app", "image": image}]},
            },
        },
    }


def pull_secret(name: str, host: str, auth: tuple[str, str]) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret with ``auth`` (username, password) keyed by ``host``."""
    entry = {"auth": base64.b64encode(":".join(auth).encode()).decode()}
    config = json.dumps({"auths": {host: entry}})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def registry_policy(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A RegistryPolicy named ``name`` with ``spec``."""
    return {
        "apiVersion": "geopin.io/v1alpha1",
        "kind": "RegistryPolicy",
        "metadata": {"name": name},
        "spec": dict(spec),
    }
