"""``geopin probe``: ask each regional endpoint once, concurrently, whether it serves the registry API.

The answer is the canary image's manifest with ``--canary``, else ``GET /v2/``. Formatting is pure
(rows in, text out) so that it is tested without a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geopin.cli.errors import EXIT_USAGE, CliError
from geopin.cli.output import table
from geopin.core.endpoints import is_acr, regional_endpoint
from geopin.core.policy import GLOBAL_REGION, HOST_RE, REGION_RE
from geopin.core.references import InvalidReference, parse
from geopin.io.probes import Outcome, ProbeResult, RegistryClient

__all__ = [
    "ProbeRow",
    "check_canary",
    "format_probe_table",
    "make_client",
    "parse_endpoints",
    "probe_document",
    "probe_targets",
    "read_ca",
    "run_probes",
]


def parse_endpoints(values: Sequence[str]) -> dict[str, str]:
    """``["eastus=host:port", ...]`` → ``{"eastus": "host:port"}``; CliError (usage) when malformed."""
    endpoints: dict[str, str] = {}
    for value in values:
        region, sep, host = value.partition("=")
        region, host = region.strip(), host.strip()
        if not sep or not region or not host:
            raise CliError(f"--endpoint {value!r}: expected REGION=HOST[:PORT]", EXIT_USAGE)
        if not REGION_RE.fullmatch(region) or region == GLOBAL_REGION:
            raise CliError(
                f"--endpoint {value!r}: invalid region {region!r} (lower-case letters and digits)", EXIT_USAGE
            )
        if not HOST_RE.fullmatch(host):
            raise CliError(f"--endpoint {value!r}: {host!r} is not a host[:port] (no scheme, no path)", EXIT_USAGE)
        if region in endpoints:
            raise CliError(f"--endpoint: region {region!r} given twice", EXIT_USAGE)
        endpoints[region] = host
    return endpoints


def probe_targets(
    registry: str, regions: Sequence[str], endpoints: Mapping[str, str], include_global: bool
) -> list[tuple[str, str]]:
    """(region, endpoint) pairs in the order given, duplicates dropped; ``global`` last when asked for.

    CliError (usage) for an invalid region or registry, an ``--endpoint`` for a region that is not
    probed, or a region without an endpoint when the registry is not an ACR login server.
    """
    if not HOST_RE.fullmatch(registry):
        raise CliError(f"REGISTRY {registry!r}: expected a login server host[:port] (no scheme, no path)", EXIT_USAGE)
    ordered: list[str] = []
    for region in regions:
        if not REGION_RE.fullmatch(region) or region == GLOBAL_REGION:
            raise CliError(
                f"--region {region!r}: invalid region (lower-case letters and digits; use --global for the "
                "global endpoint)",
                EXIT_USAGE,
            )
        if region not in ordered:
            ordered.append(region)
    extra = sorted(set(endpoints) - set(ordered))
    if extra:
        raise CliError(f"--endpoint {extra[0]}=...: {extra[0]!r} is not one of the --region values", EXIT_USAGE)
    missing = [r for r in ordered if r not in endpoints]
    if missing and not is_acr(registry):
        raise CliError(
            f"{registry} is not an Azure Container Registry login server (<name>.azurecr.io): "
            f"give --endpoint {missing[0]}=HOST for every region",
            EXIT_USAGE,
        )
    targets = [(r, endpoints[r] if r in endpoints else regional_endpoint(registry, r)) for r in ordered]
    if include_global:
        targets.append((GLOBAL_REGION, registry))
    return targets


def check_canary(canary: str | None) -> None:
    if canary is None:
        return
    try:
        parse(canary)
    except InvalidReference as e:
        raise CliError(f"--canary {canary!r}: not an image reference: {e.reason}", EXIT_USAGE) from None


def read_ca(path: str | None) -> str:
    """The PEM text of ``--ca`` (empty without one); CliError (problem, exit 1) when unreadable."""
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CliError(f"cannot read --ca {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--ca {path}: not a PEM file") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CliError(f"--ca {path}: no PEM certificate in it")
    return text


@dataclass(frozen=True, slots=True)
class ProbeRow:
    region: str
    endpoint: str
    result: ProbeResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "endpoint": self.endpoint,
            "outcome": str(self.result.outcome),
            "status": self.result.status,
            "latencyMilliseconds": round(self.result.latency_seconds * 1000),
            "message": self.result.message,
        }


def make_client(scheme: str, timeout: float, ca_bundle: str) -> RegistryClient:
    """The registry client of one ``probe`` run (a seam for tests)."""
    try:
        return RegistryClient(scheme=scheme, timeout_seconds=timeout, ca_bundle=ca_bundle)
    except ValueError as e:
        raise CliError(f"--ca: {e}") from None


async def _probe_all(client: RegistryClient, targets: Sequence[tuple[str, str]], canary: str | None) -> list[ProbeRow]:
    async with client:
        results = await asyncio.gather(*(client.probe(endpoint, canary) for _, endpoint in targets))
    return [ProbeRow(region, endpoint, result) for (region, endpoint), result in zip(targets, results, strict=True)]


def run_probes(client: RegistryClient, targets: Sequence[tuple[str, str]], canary: str | None) -> list[ProbeRow]:
    """Probe every target once, concurrently; the rows in target order."""
    return asyncio.run(_probe_all(client, targets, canary))


def probe_document(registry: str, rows: Sequence[ProbeRow]) -> dict[str, Any]:
    return {
        "registry": registry,
        "ok": all(row.result.outcome is Outcome.OK for row in rows),
        "probes": [row.as_dict() for row in rows],
    }


def format_probe_table(rows: Sequence[ProbeRow]) -> str:
    body = [
        [
            row.region,
            row.endpoint,
            str(row.result.outcome),
            "-" if row.result.status is None else str(row.result.status),
            f"{round(row.result.latency_seconds * 1000)}ms",
            row.result.message or "-",
        ]
        for row in rows
    ]
    return "\n".join(table(["REGION", "ENDPOINT", "OUTCOME", "STATUS", "LATENCY", "MESSAGE"], body)) + "\n"
