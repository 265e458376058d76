"""Workloads: a compact view of each in geopin's cache, and a write queued only when one is needed.

Only ``kopf.on.event`` watches workloads: Kopf then keeps no progress, diff-base or finalizer on
them, so a workload geopin does not rewrite gets no write at all. ReplicaSets that a controller owns
(a Deployment's) are not workloads of their own and stay out of the cache.
"""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.runtime import Runtime
from geopin.core.workloads import KINDS, PATCH_KINDS, Kind, tracked, view_of


def _register(kind: Kind) -> None:
    async def changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime | None = memo.get("runtime")
        if runtime is None:
            return
        view = view_of(kind, body)
        version = body.get("metadata", {}).get("resourceVersion")
        if type == "DELETED" or not tracked(kind, body):
            runtime.workload_gone(view.ref, view.uid, version)
        else:
            runtime.workload_changed(view, version)

    kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}_changed")(changed)


for _name in PATCH_KINDS:
    _register(KINDS[_name])
