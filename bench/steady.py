"""Steady state: many Deployments, a third on the policy's registry, the operator converged.

Over a window, sample the operator process's RSS (/proc/PID/status VmRSS) and CPU time
(/proc/PID/stat utime+stime, every thread) once a second, and count its API writes in the audit log.
Then restart it and measure the time until its resync is complete (the "usable replicas [...]: 0
workloads queued" line after "geopin started") and the writes it made meanwhile (target: zero).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from tests.harness.waiting import wait_until

from bench.env import (
    HOME,
    OTHER_IMAGES,
    REGISTRY,
    BenchEnv,
    audit_time,
    log_time,
    original_image,
    say,
    table,
    write_result,
)

NAME = "steady"
FULL_DEPLOYMENTS = 10_000
SMOKE_DEPLOYMENTS = 300
NAMESPACES = 100
FULL_SECONDS = 300.0
SMOKE_SECONDS = 10.0
QUIET_SECONDS = 5.0  # convergence: no operator write for this long after the last pin
AFTER_RESYNC_SECONDS = 30.0  # writes are still counted this long after the resync completed
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONTROLLER_QPS = 200  # kube-controller-manager's default 20/s needs ~8 min for 3,334 new ReplicaSets


def _rss_and_cpu(pid: int) -> tuple[float, float, float]:
    """(VmRSS MiB, VmHWM MiB, CPU seconds of every thread so far) of a live process."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based), i.e. indexes 11 and 12 here.
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return rss, hwm, cpu


def _sample(env: BenchEnv, seconds: float) -> dict[str, Any]:
    pid = env.pid
    mark = env.cp.audit_line_count()
    rss0, _, cpu0 = _rss_and_cpu(pid)
    began = time.monotonic()
    samples: list[tuple[float, float, float]] = [(0.0, rss0, cpu0)]
    next_at = began + 1.0
    while (now := time.monotonic()) < began + seconds:
        time.sleep(max(0.0, next_at - now))  # the sampling period, not a synchronisation
        next_at += 1.0
        rss, _, cpu = _rss_and_cpu(pid)
        samples.append((time.monotonic() - began, rss, cpu))
        if len(samples) % 30 == 0:
            say(f"  {samples[-1][0]:.0f}s: RSS {rss:.0f} MiB, CPU {100 * (cpu - cpu0) / samples[-1][0]:.2f}%")
    elapsed = samples[-1][0]
    _, hwm, _ = _rss_and_cpu(pid)
    writes = env.writes_by(env.operator.user, mark)
    per_second = [100 * (b[2] - a[2]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    return {
        "window_seconds": elapsed,
        "samples": len(samples),
        "peak_rss_mib": max(s[1] for s in samples),
        "mean_rss_mib": sum(s[1] for s in samples) / len(samples),
        "vmhwm_mib": hwm,
        "cpu_seconds": samples[-1][2] - cpu0,
        "mean_cpu_percent_of_one_core": 100 * (samples[-1][2] - cpu0) / elapsed,
        "max_cpu_percent_in_one_second": max(per_second) if per_second else 0.0,
        "writes": sum(writes.values()),
        "writes_per_minute": 60 * sum(writes.values()) / elapsed,
        "writes_by_kind": writes,
    }


def _restart(env: BenchEnv, after_seconds: float) -> dict[str, Any]:
    mark = env.cp.audit_line_count()
    lines_before = len(env.log_lines())
    stop_began = time.time()
    env.operator.stop()
    began = time.time()
    env.start_operator()

    def resynced() -> float | None:
        lines = env.log_lines()[lines_before:]
        started = next((i for i, line in enumerate(lines) if "geopin started" in line), None)
        if started is None:
            return None
        pattern = re.compile(r"usable replicas \[.*\]: 0 workloads queued")
        for line in lines[started:]:
            if pattern.search(line):
                return log_time(line)
        queued = [line for line in lines[started:] if re.search(r"usable replicas \[.*\]: [1-9]\d* workloads", line)]
        if queued:
            raise AssertionError(f"the restart queued workloads: {queued[0]}")
        return None

    done = wait_until(resynced, timeout=300, interval=0.1, what="the resync after the restart")
    started_at = next((log_time(line) for line in env.log_lines()[lines_before:] if "geopin started" in line), None)
    say(f"resync complete {done - began:.1f}s after the restart; counting writes for {after_seconds:.0f}s more")
    until = done + after_seconds
    # A measurement window: keep counting writes after the resync (the status loop resyncs every 60 s).
    wait_until(lambda: time.time() >= until, timeout=after_seconds + 5, interval=0.5, what="the counting window")
    writes = env.writes_by(env.operator.user, mark)
    rss, hwm, _ = _rss_and_cpu(env.pid)
    return {
        "stop_seconds": began - stop_began,
        "start_to_resync_seconds": done - began,
        "geopin_started_to_resync_seconds": None if started_at is None else done - started_at,
        "counted_until_seconds_after_resync": after_seconds,
        "writes": sum(writes.values()),
        "writes_by_kind": writes,
        "rss_after_resync_mib": rss,
        "vmhwm_after_resync_mib": hwm,
    }


def run(count: int, seconds: float) -> dict[str, Any]:
    namespaces = [f"team-{i:03d}" for i in range(min(NAMESPACES, count))]
    items: list[tuple[str, str, str]] = []
    for i in range(count):
        image = original_image(i) if i % 3 == 0 else OTHER_IMAGES[i % 2]
        items.append((namespaces[i % len(namespaces)], f"app-{i}", image))
    managed = sum(1 for _, _, image in items if image.startswith(REGISTRY))
    with BenchEnv(controller_qps=CONTROLLER_QPS) as env:
        env.create_namespaces(namespaces)
        create_seconds = env.create_deployments(items)
        env.create_policy()
        endpoint = env.registries[HOME].endpoint
        started = time.time()
        mark = env.cp.audit_line_count()
        env.start_operator()

        def pinned() -> bool:
            patched = {p.name for p in env.patches(mark) if p.user == env.operator.user}
            return len(patched) >= managed

        wait_until(pinned, timeout=120 + count * 0.05, interval=0.5, what=f"{managed} Deployments pinned")
        images = env.deployment_images()
        on_home = sum(1 for image in images.values() if image.startswith(endpoint))
        if on_home != managed:
            raise AssertionError(f"{on_home} of {managed} Deployments on {HOME}")
        last_pin = max(p.completed for p in env.patches(mark) if p.user == env.operator.user)
        say(f"{managed} of {count} Deployments pinned {last_pin - started:.1f}s after the start")

        def quiet() -> bool:
            events = env.cp.audit_events(mark)
            mine = [e for e in events if (e.get("user") or {}).get("username") == env.operator.user]
            last = max((e["stageTimestamp"] for e in mine), default="")
            return not last or time.time() - audit_time(last) >= QUIET_SECONDS

        wait_until(quiet, timeout=120, interval=0.5, what=f"no operator write for {QUIET_SECONDS:.0f}s")
        # Steady means the cluster too: kube-controller-manager makes a ReplicaSet for every pinned
        # template, and until it is done its watch events, not geopin's own work, are what the
        # operator's CPU would measure.
        settle_began = time.monotonic()
        wait_until(
            lambda: env.deployments_unsettled() == 0, timeout=900, interval=5, what="the deployment controller settled"
        )
        settle_seconds = time.monotonic() - settle_began
        say(f"the deployment controller caught up {settle_seconds:.0f}s after the last pin")
        say(f"converged; sampling the operator (pid {env.pid}) for {seconds:.0f}s")
        steady = _sample(env, seconds)
        restart = _restart(env, min(AFTER_RESYNC_SECONDS, seconds))
        version = env.kubernetes_version()

    figures = {
        "deployments": count,
        "namespaces": len(namespaces),
        "managed_deployments": managed,
        "create_seconds": create_seconds,
        "initial_pin_seconds": last_pin - started,
        "controller_settle_seconds": settle_seconds,
        "steady": steady,
        "restart": restart,
    }
    table(
        f"steady state ({count} Deployments, {managed} on {REGISTRY}, {seconds:.0f}s window)",
        ["peak RSS MiB", "VmHWM MiB", "mean CPU %", "max 1s CPU %", "writes", "writes/min"],
        [
            [
                steady["peak_rss_mib"],
                steady["vmhwm_mib"],
                steady["mean_cpu_percent_of_one_core"],
                steady["max_cpu_percent_in_one_second"],
                steady["writes"],
                steady["writes_per_minute"],
            ]
        ],
    )
    table(
        "restart resync",
        ["start→resync s", "'geopin started'→resync s", "writes", "counted until (s after resync)"],
        [
            [
                restart["start_to_resync_seconds"],
                restart["geopin_started_to_resync_seconds"],
                restart["writes"],
                restart["counted_until_seconds_after_resync"],
            ]
        ],
    )
    parameters = {
        "deployments": count,
        "namespaces": len(namespaces),
        "managed_fraction": "every third Deployment",
        "window_seconds": seconds,
        "sample_period_seconds": 1.0,
        "quiet_before_window_seconds": QUIET_SECONDS,
        "probe": "defaults (5 s interval)",
        "controller_manager_qps": CONTROLLER_QPS,
        "window_starts": "no operator write for 5 s and every Deployment observed by its controller",
    }
    write_result(NAME, version, parameters, figures)
    return {"parameters": parameters, "figures": figures}
