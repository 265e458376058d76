"""A passive signal: the kubelet's image pull failures naming a replica trigger a probe of it now,
and the failing Pod is a candidate for rescue (``rescuePods``, control/rescue.py).

They never switch anything by themselves (a pull can fail for reasons of its own: a missing tag, a
node's credentials); the probe and the state machine decide. This turns a replica outage that the
pods see first into a verdict within seconds, even with a long probe interval.
"""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.runtime import Runtime

# Event reasons the kubelet uses around image pulls (core/v1 Events on Pods).
PULL_FAILURE_REASONS = frozenset({"Failed", "BackOff", "ErrImagePull", "ImagePullBackOff"})


def is_pull_failure(body: kopf.Body, **_: Any) -> bool:
    involved = body.get("involvedObject") or {}
    return (
        involved.get("kind") == "Pod"
        and body.get("reason") in PULL_FAILURE_REASONS
        and "pull" in str(body.get("message", "")).lower()
    )


@kopf.on.event("", "v1", "events", when=is_pull_failure)
async def pull_failed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        involved = body.get("involvedObject") or {}
        runtime.pull_failed(
            str(body.get("message", "")),
            str(body.get("reason")),
            str(involved.get("namespace") or ""),
            str(involved.get("name") or ""),
        )
