"""Bodies of the objects the tests and benchmarks create, written once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["deployment"]


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
