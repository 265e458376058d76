"""A policy's status conditions (metav1.Condition) and when a status is worth writing.

Pure: the control layer's reporter gathers the monitor's verdicts into a snapshot and calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from geopin.core.decisions import PolicySnapshot
from geopin.core.health import Target, preference_order
from geopin.core.policy import GLOBAL_REGION, Strategy
from geopin.core.timestamps import rfc3339

__all__ = ["Condition", "conditions", "degraded", "differs", "failed_over", "failover_path"]

Condition = tuple[str, bool, str, str]  # type, status, reason, message


def conditions(previous: Mapping[str, Any], generation: int, items: Iterable[Condition]) -> list[dict[str, Any]]:
    """metav1.Conditions whose lastTransitionTime moves only when their status does."""
    before = {c.get("type"): c for c in previous.get("conditions", [])}
    result = []
    for type_, status, reason, message in items:
        value = "True" if status else "False"
        old = before.get(type_)
        unchanged = old is not None and old.get("status") == value
        result.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": old.get("lastTransitionTime") if unchanged and old is not None else rfc3339(),
            }
        )
    return result


def degraded(replicas: Sequence[Mapping[str, Any]]) -> Condition:
    unhealthy = [r["region"] for r in replicas if r["state"] in ("Unhealthy", "Excluded")]
    if unhealthy:
        return ("Degraded", True, "ReplicaUnavailable", f"not usable: {', '.join(unhealthy)}")
    healthy = sum(r["state"] == "Healthy" for r in replicas)
    return ("Degraded", False, "AllReplicasHealthy", f"{healthy}/{len(replicas)} replicas healthy")


def failed_over(snapshot: PolicySnapshot, target: Target) -> Condition:
    preferred = preference_order(snapshot.policy, snapshot.cluster_region)
    home = preferred[0] if preferred else GLOBAL_REGION
    if target.region != home:
        return ("FailedOver", True, "FailedOver", f"pointing to {target.region} instead of {home}")
    return ("FailedOver", False, "AtHome", f"pointing to the home region {home}")


def failover_path(
    snapshot: PolicySnapshot, no_redirect_path: str | None, redirect_path: str = "geopin's webhook"
) -> Condition:
    """How a switch reaches the workloads (``FailoverPath``): redirected Pods, or repointed templates."""
    failover = snapshot.policy.failover
    pace = f"{failover.max_repoints_per_second}/s" if failover.max_repoints_per_second else "unpaced"
    if snapshot.redirects:
        follow = (
            f"templates follow a replica unusable for {failover.repoint_after_seconds}s"
            if failover.repoint_after_seconds
            else "templates never follow"
        )
        return (
            "FailoverPath",
            True,
            "Redirect",
            f"new Pods are pinned at admission by {redirect_path}; {follow} ({pace})",
        )
    if failover.strategy is Strategy.REDIRECT:
        return (
            "FailoverPath",
            False,
            "NoAdmissionPath",
            f"{no_redirect_path}: templates are repointed instead ({pace})",
        )
    return ("FailoverPath", True, "Repoint", f"templates are repointed on a switch ({pace})")


# Fields that change on every probe: written when the status changes for another reason, never on
# their own, so a steady state makes no API writes (live values are in the metrics).
_VOLATILE_REPLICA_FIELDS = ("lastProbeTime", "latencyMilliseconds", "message")


def differs(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    def strip(s: Mapping[str, Any]) -> Any:
        conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions", [])]
        replicas = [{k: v for k, v in r.items() if k not in _VOLATILE_REPLICA_FIELDS} for r in s.get("replicas", [])]
        return {
            **{k: v for k, v in s.items() if k not in ("conditions", "lastSwitch", "replicas")},
            "conditions": conditions,
            "replicas": replicas,
        }

    return bool(strip(new) != strip(old))
