"""Failover convergence: N Deployments pinned to eastus, eastus SIGKILLed, then healed.

Per N, in a fresh environment: outage → detection (the operator's "replica eastus Healthy -> Unhealthy"
log line), detection → last workload repointed (the audit stageTimestamp of the operator's last
successful patch), and the same for failback. Then the ceiling: with the operator stopped, a bare
httpx.AsyncClient sends the same guarded JSON patches (built by geopin.core.rewrite itself) to the same N
objects at concurrency 8 and 32, and the operator's repoint throughput is reported as a ratio of
the best ceiling.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING, Any

import httpx
from tests.harness.controlplane import ADMIN_USER
from tests.harness.waiting import wait_until

from bench.env import (
    HOME,
    NEXT,
    REGISTRY,
    BenchEnv,
    Patch,
    original_image,
    say,
    table,
    write_result,
)
from geopin.core.rewrite import Desired, json_patch, read_record
from geopin.core.workloads import KINDS, view_of

if TYPE_CHECKING:
    from collections.abc import Sequence

NAME = "failover"
NAMESPACE = "fleet"
FULL_SIZES = (100, 1000, 5000)
SMOKE_SIZES = (50,)
FAILBACK_DELAY = 10
CONCURRENCIES = (8, 32)
PROBE_INTERVAL = 5.0  # the policy's default probe.intervalSeconds
# Outages per N (the detection's phase varies from round to round: the tables show the median round
# and the worst); N = 5,000 runs one, for time.
FULL_ROUNDS, SMOKE_ROUNDS, MAX_N_FOR_ROUNDS = 3, 1, 1000
DEPLOYMENT = KINDS["Deployment"]


def _window(patches: Sequence[Patch]) -> tuple[float, float]:
    return min(p.received for p in patches), max(p.completed for p in patches)


def _repoint(patches: Sequence[Patch], detected: float) -> dict[str, Any]:
    """The repoint after a verdict: when its first and last patches landed, and how fast it went."""
    first, last = _window(patches)
    return {
        "detection_to_first_patch": first - detected,
        "detection_to_last_patch": last - detected,
        "patch_window": last - first,
        "objects_per_second": len({p.name for p in patches}) / (last - first),
        "successful_patches": len(patches),
    }


class Fleet:
    def __init__(self, env: BenchEnv, n: int) -> None:
        self.env = env
        self.n = n
        self.timeout = 90 + n * 0.05

    def on(self, region: str) -> bool:
        endpoint = self.env.registries[region].endpoint
        images = self.env.deployment_images(NAMESPACE)
        return len(images) == self.n and all(
            image == original_image(int(name.split("-")[1])).replace(REGISTRY, endpoint, 1)
            for (_, name), image in images.items()
        )

    def operator_patches(self, mark: int) -> list[Patch]:
        return [p for p in self.env.patches(mark, namespace_prefix=NAMESPACE) if p.user == self.env.operator.user]

    def wait_moved(self, mark: int, region: str, what: str) -> list[Patch]:
        """Poll the audit log (a file: no load on the API server) until every workload was patched,
        then confirm with a LIST that every one is on `region`."""
        poll = 0.1 if self.n <= 1000 else 0.5

        def all_patched() -> list[Patch] | None:
            patches = self.operator_patches(mark)
            return patches if len({p.name for p in patches}) >= self.n else None

        patches: list[Patch] = wait_until(all_patched, timeout=self.timeout, interval=poll, what=what)
        wait_until(lambda: self.on(region), timeout=self.timeout, interval=poll, what=f"{what} (LIST)")
        return patches


def _ceiling_patches(env: BenchEnv, region: str) -> list[tuple[str, bytes]]:
    """The operator's own guarded patch (geopin.core.rewrite.json_patch) moving each workload to `region`."""
    endpoint = env.registries[region].endpoint
    out: list[tuple[str, bytes]] = []
    for body in env.list_json(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"):
        view = view_of(DEPLOYMENT, body)
        record, _ = read_record(view.annotations)
        images = {key: original.replace(REGISTRY, endpoint, 1) for key, original in record.items()}
        ops = json_patch(DEPLOYMENT, view, Desired(images=images, originals=record, pinned_region=region))
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{view.name}"
        out.append((path, json.dumps(ops).encode()))
    return out


async def _send(env: BenchEnv, patches: list[tuple[str, bytes]], concurrency: int) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors = 0
    pending = iter(patches)
    headers = {"Content-Type": "application/json-patch+json"}
    context = env.ca.ssl_context(env.cp.admin)
    async with httpx.AsyncClient(base_url=env.cp.url, verify=context, limits=limits, timeout=60.0) as http:

        async def worker() -> None:
            nonlocal errors
            for path, body in pending:
                response = await http.patch(path, content=body, headers=headers)
                if response.status_code != 200:
                    errors += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - began, errors


def _ceiling(env: BenchEnv, fleet: Fleet) -> dict[str, Any]:
    results: dict[str, Any] = {}
    region = NEXT
    for concurrency in CONCURRENCIES:
        patches = _ceiling_patches(env, region)
        mark = env.cp.audit_line_count()
        elapsed, errors = asyncio.run(_send(env, patches, concurrency))
        if not fleet.on(region):
            raise AssertionError(f"ceiling run at concurrency {concurrency} did not move every workload to {region}")
        mine = [p for p in env.patches(mark, namespace_prefix=NAMESPACE) if p.user == ADMIN_USER]
        first, last = _window(mine)
        results[str(concurrency)] = {
            "client_seconds": elapsed,
            "audit_seconds": last - first,
            "objects_per_second": fleet.n / (last - first),
            "client_objects_per_second": fleet.n / elapsed,
            "errors": errors,
        }
        say(f"  ceiling at concurrency {concurrency}: {fleet.n / (last - first):.0f} objects/s")
        region = HOME if region == NEXT else NEXT
    return results


def _outage_round(env: BenchEnv, fleet: Fleet, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """SIGKILL the home replica, wait for every workload on the next; heal it, wait for the failback."""
    # Where the outage falls in the 5 s probe schedule decides up to 5 s of the detection: draw it
    # at random rather than let every round start in the same phase as the previous failback.
    time.sleep(random.uniform(0, PROBE_INTERVAL))  # the outage's phase, not a synchronisation
    mark = env.cp.audit_line_count()
    outage = time.time()
    env.registries[HOME].stop()
    say(f"N={n}: SIGKILLed {HOME}")
    patches = fleet.wait_moved(mark, NEXT, f"all {n} Deployments on {NEXT}")
    detected = env.log_time_of(rf"replica {HOME} Healthy -> Unhealthy", outage)
    if detected is None:
        raise AssertionError("no 'Healthy -> Unhealthy' log line after the outage")
    failover = {
        "outage_to_detection": detected - outage,
        "outage_to_last_patch": _window(patches)[1] - outage,
        **_repoint(patches, detected),
    }

    mark = env.cp.audit_line_count()
    healed = time.time()
    env.registries[HOME].heal()
    patches = fleet.wait_moved(mark, HOME, f"all {n} Deployments back on {HOME}")
    healthy = env.log_time_of(rf"replica {HOME} Unhealthy -> Healthy", healed)
    if healthy is None:
        raise AssertionError("no 'Unhealthy -> Healthy' log line after the heal")
    last = _window(patches)[1]
    failback = {
        "heal_to_detection": healthy - healed,
        "detection_to_last_patch_minus_delay": last - healthy - FAILBACK_DELAY,
        "heal_to_last_patch": last - healed,
        "heal_to_last_patch_minus_delay": last - healed - FAILBACK_DELAY,
        **_repoint(patches, healthy),
    }
    return failover, failback


def run_one(n: int, rounds_wanted: int) -> tuple[dict[str, Any], str]:
    with BenchEnv() as env:
        fleet = Fleet(env, n)
        env.create_namespaces([NAMESPACE])
        create_seconds = env.create_deployments([(NAMESPACE, f"app-{i}", original_image(i)) for i in range(n)])
        env.create_policy(failback_delay=FAILBACK_DELAY)
        mark = env.cp.audit_line_count()
        started = time.time()
        env.start_operator()
        patches = fleet.wait_moved(mark, HOME, f"all {n} Deployments pinned to {HOME}")
        initial_pin = max(p.completed for p in patches) - started
        say(f"N={n}: initial pin {initial_pin:.1f}s after start")
        wait_until(
            lambda: {"eastus", "westus", "centralus"} <= set(env.policy_status().get("usableRegions") or []),
            timeout=60,
            what="every replica usable",
        )

        rounds: list[dict[str, Any]] = []
        for round_ in range(rounds_wanted if n <= MAX_N_FOR_ROUNDS else 1):
            failover, failback = _outage_round(env, fleet, n)
            say(
                f"N={n} round {round_ + 1}: failover {failover['outage_to_last_patch']:.2f}s outage → last patch, "
                f"failback {failback['heal_to_last_patch']:.2f}s heal → last patch (delay {FAILBACK_DELAY}s)"
            )
            rounds.append({"failover": failover, "failback": failback})
        # The round whose outage → last patch is the median stands for N in the tables; all are kept.
        ordered = sorted(rounds, key=lambda r: r["failover"]["outage_to_last_patch"])
        failover, failback = ordered[len(ordered) // 2]["failover"], ordered[len(ordered) // 2]["failback"]
        worst = ordered[-1]["failover"]["outage_to_last_patch"]

        # -- ceiling (the operator stopped so that nothing fights the bare client) ----------------
        env.operator.stop()
        ceiling = _ceiling(env, fleet)
        best = max(c["objects_per_second"] for c in ceiling.values())
        figures = {
            "n": n,
            "create_seconds": create_seconds,
            "initial_pin_seconds": initial_pin,
            "failover": failover,
            "failback": failback,
            "rounds": rounds,
            "worst_outage_to_last_patch": worst,
            "ceiling": ceiling,
            "best_ceiling_objects_per_second": best,
            "failover_throughput_ratio": failover["objects_per_second"] / best,
            "failback_throughput_ratio": failback["objects_per_second"] / best,
        }
        return figures, env.kubernetes_version()


def run(sizes: Sequence[int], rounds: int = FULL_ROUNDS) -> dict[str, Any]:
    figures: list[dict[str, Any]] = []
    version = "unknown"
    for n in sizes:
        result, version = run_one(n, rounds)
        figures.append(result)
    table(
        "failover (SIGKILL of eastus; default probe settings; the median round; seconds unless stated)",
        [
            "N",
            "rounds",
            "outage→detect",
            "detect→last",
            "outage→last",
            "worst outage→last",
            "obj/s",
            "ceiling obj/s",
            "ratio",
        ],
        [
            [
                f["n"],
                len(f["rounds"]),
                f["failover"]["outage_to_detection"],
                f["failover"]["detection_to_last_patch"],
                f["failover"]["outage_to_last_patch"],
                f["worst_outage_to_last_patch"],
                f["failover"]["objects_per_second"],
                f["best_ceiling_objects_per_second"],
                f["failover_throughput_ratio"],
            ]
            for f in figures
        ],
    )
    table(
        f"failback (eastus restarted; failbackDelaySeconds {FAILBACK_DELAY})",
        ["N", "heal→detect", "detect→first", "detect→last", "heal→last", "heal→last-delay", "obj/s", "ratio"],
        [
            [
                f["n"],
                f["failback"]["heal_to_detection"],
                f["failback"]["detection_to_first_patch"],
                f["failback"]["detection_to_last_patch"],
                f["failback"]["heal_to_last_patch"],
                f["failback"]["heal_to_last_patch_minus_delay"],
                f["failback"]["objects_per_second"],
                f["failback_throughput_ratio"],
            ]
            for f in figures
        ],
    )
    table(
        "ceiling (bare httpx.AsyncClient, the same guarded JSON patches; objects/s from the audit log)",
        ["N", *(f"c={c}" for c in CONCURRENCIES)],
        [[f["n"], *(f["ceiling"][str(c)]["objects_per_second"] for c in CONCURRENCIES)] for f in figures],
    )
    parameters = {
        "sizes": list(sizes),
        "fault": "SIGKILL of the eastus registry",
        "probe": "defaults (5 s interval, 2 s timeout, 3 failures)",
        "failback_delay_seconds": FAILBACK_DELAY,
        "rounds_per_n": rounds,
        "rounds_only_up_to_n": MAX_N_FOR_ROUNDS,
        "outage_phase": "uniform random 0-5 s pause before each SIGKILL",
        "ceiling_concurrency": list(CONCURRENCIES),
        "operator_workers": 8,
    }
    write_result(NAME, version, parameters, figures)
    return {"parameters": parameters, "figures": figures}
