"""Probe loop cost with one replica hung: the other replicas' probes stay on schedule.

eastus is SIGSTOPped (the kernel accepts connections, nothing answers). Over the window, the
operator's `geopin_probe_duration_seconds_count` is scraped every 0.1 s; each increment for westus and
centralus marks a completed probe, and the intervals between them are compared with the configured
interval (default 5 s). Resolution is the scrape period.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from tests.harness.waiting import wait_until

from bench.env import BenchEnv, say, table, write_result

NAME = "probe-hang"
FULL_SECONDS = 60.0
SMOKE_SECONDS = 11.0  # two probe intervals of the healthy replicas
SCRAPE_SECONDS = 0.1
CONFIGURED_INTERVAL = 5.0  # the policy's default probe.intervalSeconds
HUNG = "eastus"
OTHERS = ("westus", "centralus")
_COUNT = re.compile(r"^geopin_probe_duration_seconds_count\{([^}]*)\} (\S+)")


def _counts(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _COUNT.match(line)
        if match is None:
            continue
        region = re.search(r'region="([^"]+)"', match.group(1))
        if region is not None:
            out[region.group(1)] = out.get(region.group(1), 0.0) + float(match.group(2))
    return out


def _observe(env: BenchEnv, seconds: float) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Completion times (monotonic) of each region's probes, and the counts at the start and end."""
    completions: dict[str, list[float]] = {r: [] for r in (HUNG, *OTHERS)}
    first = last = _counts(env.operator.metrics())
    began = time.monotonic()
    next_at = began
    while time.monotonic() < began + seconds:
        next_at += SCRAPE_SECONDS
        time.sleep(max(0.0, next_at - time.monotonic()))  # the scrape period
        now = time.monotonic()
        counts = _counts(env.operator.metrics())
        for region, value in counts.items():
            if region in completions and value > last.get(region, 0.0):
                completions[region].append(now)
        last = counts
    return completions, first, last


def run(seconds: float) -> dict[str, Any]:
    with BenchEnv() as env:
        env.start_operator()
        env.create_policy()
        wait_until(
            lambda: {HUNG, *OTHERS} <= set(env.policy_status().get("usableRegions") or []),
            timeout=60,
            what="every replica usable",
        )
        env.registries[HUNG].pause()
        say(f"SIGSTOPped {HUNG}; scraping probe counts every {SCRAPE_SECONDS}s for {seconds:.0f}s")
        try:
            completions, first, last = _observe(env, seconds)
        finally:
            env.registries[HUNG].resume()
        version = env.kubernetes_version()

    figures: dict[str, Any] = {"configured_interval_seconds": CONFIGURED_INTERVAL, "regions": {}}
    for region in OTHERS:
        stamps = completions[region]
        intervals = [b - a for a, b in itertools.pairwise(stamps)]
        figures["regions"][region] = {
            "probes": len(stamps),
            "intervals": len(intervals),
            "mean_interval_seconds": sum(intervals) / len(intervals) if intervals else None,
            "max_interval_seconds": max(intervals) if intervals else None,
            "min_interval_seconds": min(intervals) if intervals else None,
            "max_late_seconds": max(intervals) - CONFIGURED_INTERVAL if intervals else None,
        }
    figures["hung_region_probes_completed"] = last.get(HUNG, 0.0) - first.get(HUNG, 0.0)
    table(
        f"probe intervals with {HUNG} hung (SIGSTOP), {seconds:.0f}s, configured {CONFIGURED_INTERVAL:.0f}s",
        ["region", "probes", "mean interval s", "max interval s", "max late s"],
        [
            [
                region,
                f["probes"],
                f["mean_interval_seconds"],
                f["max_interval_seconds"],
                f["max_late_seconds"],
            ]
            for region, f in figures["regions"].items()
        ],
    )
    print(f"{HUNG} (hung): {figures['hung_region_probes_completed']:.0f} probes completed (timeouts) in the window")
    parameters = {
        "window_seconds": seconds,
        "scrape_period_seconds": SCRAPE_SECONDS,
        "hung_replica": HUNG,
        "fault": "SIGSTOP",
        "probe": "defaults (5 s interval, 2 s timeout, 3 failures)",
    }
    write_result(NAME, version, parameters, figures)
    return {"parameters": parameters, "figures": figures}
