"""Workloads: a compact view of each in an index, and a write queued only when one is needed.

Only ``kopf.index`` and ``kopf.on.event`` watch workloads: Kopf then keeps no progress, diff-base or
finalizer on them, so a workload geopin does not rewrite gets no write at all.
"""

from __future__ import annotations

from typing import Any

import kopf

from geopin.workloads import KINDS, WorkloadView, view_of

DEPLOYMENT = KINDS["Deployment"]


@kopf.index(DEPLOYMENT.group, DEPLOYMENT.version, DEPLOYMENT.plural)
def workload_views(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], WorkloadView]:
    view = view_of(DEPLOYMENT, body)
    return {view.ref: view}


@kopf.on.event(DEPLOYMENT.group, DEPLOYMENT.version, DEPLOYMENT.plural)
async def workload_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED" or "runtime" not in memo:
        return
    reconciler = memo.runtime.reconciler
    view = view_of(DEPLOYMENT, body)
    if reconciler.needs_write(view):
        reconciler.enqueue(view.ref)
