"""``geopin status``: read RegistryPolicies from the cluster and summarise their status.

Formatting is pure (a document in, text out) so that it is tested without a network.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from geopin.cli.errors import EXIT_OK, EXIT_PROBLEM, CliError
from geopin.cli.output import table
from geopin.core.crd import GROUP, PLURAL, VERSION
from geopin.core.text import one_line

__all__ = [
    "CONDITION_TYPES",
    "fetch_policies",
    "format_status_table",
    "policy_ok",
    "status_document",
    "status_exit_code",
    "summarize_policy",
]

CONDITION_TYPES = ("Ready", "Degraded", "FailedOver", "ControlPlaneUnavailable", "NodeCredentials")


def fetch_policies(kubeconfig: str | None, name: str | None, timeout: float) -> list[dict[str, Any]]:
    """The RegistryPolicy objects (all, or the one named); CliError (problem) for any failure to get them."""
    import urllib3

    from geopin.io.kube import load_configuration

    if kubeconfig is not None and not os.path.isfile(kubeconfig):
        reason = "no such file" if not os.path.exists(kubeconfig) else "not a file"
        raise CliError(f"cannot read kubeconfig {kubeconfig}: {reason}")
    try:
        configuration = load_configuration(kubeconfig)
    except Exception as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CliError(f"cannot load kubeconfig {where}: {one_line(e)}") from None
    # A refused or silent API server fails fast: one connect retry, no read retry, bounded connect and read.
    configuration.retries = urllib3.util.Retry(total=1, connect=1, read=0, redirect=0, status=0)
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # kubeconfig's own choice; one-line output
    # urllib3 logs each retry as a WARNING: the one-line error below says it all.
    urllib3_log = logging.getLogger("urllib3")
    level = urllib3_log.level
    urllib3_log.setLevel(logging.ERROR)
    try:
        return _read_policies(configuration, name, timeout)
    finally:
        urllib3_log.setLevel(level)


def _read_policies(configuration: Any, name: str | None, timeout: float) -> list[dict[str, Any]]:
    import kubernetes
    import urllib3
    from kubernetes.client.exceptions import ApiException

    timeouts = (timeout, timeout)
    server = getattr(configuration, "host", "the API server")
    with kubernetes.client.ApiClient(configuration) as api:
        custom: Any = kubernetes.client.CustomObjectsApi(api)
        try:
            if name is not None:
                return [dict(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name, _request_timeout=timeouts))]
            listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=timeouts)
        except ApiException as e:
            if e.status == 404 and name is not None and _is_object_not_found(e):
                raise CliError(f"registrypolicy {name!r} not found") from None
            if e.status == 404:
                raise CliError(f"the RegistryPolicy CRD ({PLURAL}.{GROUP}) is not installed on {server}") from None
            if e.status in (401, 403):
                raise CliError(f"{server}: {e.status} {e.reason}: not allowed to read {PLURAL}.{GROUP}") from None
            raise CliError(f"{server}: API error {e.status} {e.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise CliError(f"cannot reach the cluster at {server}: {_connection_reason(e, timeout)}") from None
    items = listing.get("items") or []
    return sorted((dict(item) for item in items), key=lambda p: str((p.get("metadata") or {}).get("name", "")))


def _is_object_not_found(error: Any) -> bool:
    """A 404 about the object itself, not about the resource type being unknown (CRD not installed)."""
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return True
    details = body.get("details") if isinstance(body, dict) else None
    return isinstance(details, dict) and bool(details.get("name"))


def _connection_reason(error: BaseException, timeout: float) -> str:
    """One line for a failure to talk to the API server: the root cause, without urllib3's object reprs."""
    import urllib3

    reason = getattr(error, "reason", None)  # MaxRetryError.reason: the underlying error
    if isinstance(reason, BaseException):
        error = reason
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return f"no answer within {timeout:g}s"
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate verify failed: {e.verify_message}"
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {e.reason or type(e).__name__}"
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"name resolution failed: {e.strerror or e}"
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError | TimeoutError):
        return f"connect timeout after {timeout:g}s"
    text = re.sub(r"<[^>]*>:\s*|\w*Connection(?:Pool)?\([^)]*\):\s*", "", one_line(error))
    return text or type(error).__name__


def _condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return {
                "status": str(c.get("status", "Unknown")),
                "reason": str(c.get("reason", "")),
                "message": str(c.get("message", "")),
                "lastTransitionTime": c.get("lastTransitionTime"),
            }
    return None


def summarize_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """One RegistryPolicy object → the documented ``status`` summary (see ``geopin status --help``)."""
    metadata: Mapping[str, Any] = policy.get("metadata") or {}
    spec: Mapping[str, Any] = policy.get("spec") or {}
    status: Mapping[str, Any] = policy.get("status") or {}
    workloads: Mapping[str, Any] = status.get("workloads") or {}
    replicas = [
        {
            "region": r.get("region"),
            "endpoint": r.get("endpoint"),
            "state": r.get("state", "Unknown"),
            "consecutiveFailures": int(r.get("consecutiveFailures") or 0),
            "latencyMilliseconds": r.get("latencyMilliseconds"),
            "lastProbeTime": r.get("lastProbeTime"),
            "lastTransitionTime": r.get("lastTransitionTime"),
            "message": r.get("message", ""),
        }
        for r in status.get("replicas") or []
        if isinstance(r, Mapping)
    ]
    last_switch: Mapping[str, Any] | None = status.get("lastSwitch")
    summary: dict[str, Any] = {
        "name": metadata.get("name"),
        "registry": spec.get("registry"),
        "mode": spec.get("mode", "Patch"),
        "generation": metadata.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "clusterRegion": status.get("clusterRegion"),
        "activeRegion": status.get("activeRegion"),
        "activeEndpoint": status.get("activeEndpoint"),
        "healthy": status.get("healthySummary"),
        "workloads": {
            "total": int(workloads.get("total") or 0),
            "pinned": int(workloads.get("pinned") or 0),
            "awaitingReplication": int(workloads.get("awaitingReplication") or 0),
            "skipped": int(workloads.get("skipped") or 0),
            "invalid": int(workloads.get("invalid") or 0),
        },
        "conditions": {type_: _condition(status, type_) for type_ in CONDITION_TYPES},
        "replicas": replicas,
        "lastSwitch": None
        if not isinstance(last_switch, Mapping)
        else {k: last_switch.get(k) for k in ("from", "to", "reason", "time")},
    }
    summary["ok"] = policy_ok(summary)
    return summary


def policy_ok(summary: Mapping[str, Any]) -> bool:
    """Ready=True and not Degraded=True."""
    conditions: Mapping[str, Any] = summary.get("conditions") or {}
    ready, degraded = conditions.get("Ready"), conditions.get("Degraded")
    return (
        ready is not None and ready.get("status") == "True" and (degraded is None or degraded.get("status") != "True")
    )


def status_document(policies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    summaries = [summarize_policy(p) for p in policies]
    return {"ok": all(s["ok"] for s in summaries), "policies": summaries}


def status_exit_code(document: Mapping[str, Any]) -> int:
    return EXIT_OK if document.get("ok") else EXIT_PROBLEM


def _ago(timestamp: Any, now: datetime) -> str:
    """``2026-11-28T03:09:40Z`` → ``2026-11-28T03:09:40Z (5m ago)``; ``-`` when absent."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return str(timestamp)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return str(timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{timestamp} ({seconds // size}{unit} ago)"
    return f"{timestamp} ({seconds}s ago)"


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_status_table(document: Mapping[str, Any], now: datetime | None = None) -> str:
    """An overview table of the policies, then one detailed block per policy."""
    now = now or datetime.now(UTC)
    policies: Sequence[Mapping[str, Any]] = document.get("policies") or []
    if not policies:
        return ""

    def cond(summary: Mapping[str, Any], type_: str) -> str:
        c = summary["conditions"].get(type_)
        return "-" if c is None else str(c["status"])

    overview = [
        [
            _dash(s["name"]),
            _dash(s["registry"]),
            _dash(s["clusterRegion"]),
            _dash(s["activeRegion"]),
            _dash(s["healthy"]),
            str(s["workloads"]["pinned"]),
            cond(s, "Ready"),
            cond(s, "Degraded"),
            cond(s, "FailedOver"),
        ]
        for s in policies
    ]
    lines = table(
        ["NAME", "REGISTRY", "REGION", "ACTIVE", "HEALTHY", "PINNED", "READY", "DEGRADED", "FAILEDOVER"], overview
    )
    for s in policies:
        lines.extend(["", *_policy_block(s, now)])
    return "\n".join(lines) + "\n"


def _policy_block(s: Mapping[str, Any], now: datetime) -> list[str]:
    w = s["workloads"]
    active = _dash(s["activeRegion"])
    if s["activeEndpoint"]:
        active += f" ({s['activeEndpoint']})"
    lines = [
        f"Policy:          {s['name']}",
        f"Registry:        {_dash(s['registry'])}",
        f"Mode:            {_dash(s['mode'])}",
        f"Cluster region:  {_dash(s['clusterRegion'])}",
        f"Active:          {active}",
        f"Healthy:         {_dash(s['healthy'])}",
        f"Workloads:       pinned {w['pinned']}, awaiting replication {w['awaitingReplication']}, "
        f"skipped {w['skipped']}, invalid {w['invalid']} (total {w['total']})",
    ]
    generation, observed = s.get("generation"), s.get("observedGeneration")
    if observed is None and all(c is None for c in s["conditions"].values()):
        lines.append("Note:            no status yet: is the geopin operator running?")
    elif generation is not None and observed is not None and observed < generation:
        lines.append(f"Note:            status is for generation {observed}, the spec is at generation {generation}")
    conditions = []
    for type_ in CONDITION_TYPES:
        c = s["conditions"].get(type_)
        if c is None:
            conditions.append([type_, "-", "-", "-"])
        else:
            conditions.append([type_, c["status"], c["reason"] or "-", c["message"] or "-"])
    lines.append("Conditions:")
    lines.extend(table(["TYPE", "STATUS", "REASON", "MESSAGE"], conditions, indent="  "))
    lines.append("Replicas:")
    if s["replicas"]:
        rows = [
            [
                _dash(r["region"]),
                _dash(r["endpoint"]),
                _dash(r["state"]),
                str(r["consecutiveFailures"]),
                _ago(r["lastTransitionTime"], now),
                _dash(r["message"]),
            ]
            for r in s["replicas"]
        ]
        lines.extend(
            table(["REGION", "ENDPOINT", "STATE", "FAILURES", "LAST TRANSITION", "MESSAGE"], rows, indent="  ")
        )
    else:
        lines.append("  (none reported)")
    switch = s["lastSwitch"]
    if switch is None:
        lines.append("Last switch:     none")
    else:
        lines.append(
            f"Last switch:     {_dash(switch['from'])} -> {_dash(switch['to'])} ({_dash(switch['reason'])}) "
            f"at {_ago(switch['time'], now)}"
        )
    return lines
