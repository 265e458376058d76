"""Admission latency through the webhook path at fixed Pod creation rates.

The operator serves its mutating webhook (`--webhook-port/--webhook-url/--webhook-config`) and a
policy in mode Admission covers the namespace. Bare Pods are created at a paced rate (a thread pool
of senders; no scheduler, so they stay Pending). Before and after each rate, both histograms are
scraped: geopin's `geopin_admission_duration_seconds` (time inside geopin) and the API server's
`apiserver_admission_webhook_admission_duration_seconds` for the webhook (the API server's view: TLS,
network, geopin, JSON). Quantiles are computed from the bucket deltas as Prometheus'
histogram_quantile does; "max" is the upper bound of the highest bucket that gained observations.
The client-side round trip of each create is reported exactly as a third view.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
from tests.harness.procs import free_port
from tests.harness.waiting import wait_until

from bench.env import (
    HOME,
    POLICY,
    REGISTRY,
    BenchEnv,
    bucket_delta,
    max_bucket,
    parse_histogram,
    quantiles_from_buckets,
    say,
    table,
    write_result,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

NAME = "admission"
NAMESPACE = "adm"
CONFIG = "geopin-bench"
WEBHOOK = "pods.geopin.io"
FULL_RATES = (50, 100, 200)
FULL_SECONDS = 30.0
SMOKE_RATES = (20,)
SMOKE_SECONDS = 5.0
SENDERS = 32
QUANTILES = (0.5, 0.99)
GEOPIN_METRIC = "geopin_admission_duration_seconds"
APISERVER_METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def _pod(i: int) -> bytes:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p-{i}", "labels": {"app": "bench"}},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", "image": f"{REGISTRY}/team/web:{i % 50}"}],
            },
        }
    ).encode()


def _apiserver_match(labels: str) -> bool:
    return f'name="{WEBHOOK}"' in labels and 'operation="CREATE"' in labels and 'type="admit"' in labels


def _exact(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


def _one_rate(env: BenchEnv, rate: int, seconds: float, first_index: int) -> dict[str, Any]:
    count = int(rate * seconds)
    endpoint = env.registries[HOME].endpoint
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    latencies: list[float] = []
    errors: list[str] = []
    mutated = 0
    lock = threading.Lock()
    geopin_before = parse_histogram(env.operator.metrics(), GEOPIN_METRIC)
    apiserver_before = parse_histogram(env.http.get("/metrics").text, APISERVER_METRIC, _apiserver_match)
    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
    context = env.ca.ssl_context(env.cp.admin)
    with httpx.Client(base_url=env.cp.url, verify=context, limits=limits, timeout=30.0) as http:
        headers = {"Content-Type": "application/json"}

        def create(i: int) -> None:
            nonlocal mutated
            began = time.perf_counter()
            try:
                response = http.post(path, content=_pod(i), headers=headers)
            except httpx.HTTPError as error:
                with lock:
                    errors.append(repr(error))
                return
            elapsed = time.perf_counter() - began
            with lock:
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                latencies.append(elapsed)
                image = response.json()["spec"]["containers"][0]["image"]
                mutated += image.startswith(endpoint)

        with ThreadPoolExecutor(SENDERS, thread_name_prefix="bench-pod") as pool:
            started = time.monotonic()
            for k in range(count):
                due = started + k / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered rate, not a synchronisation
                pool.submit(create, first_index + k)
        finished = time.monotonic()
    geopin_after = parse_histogram(env.operator.metrics(), GEOPIN_METRIC)
    apiserver_after = parse_histogram(env.http.get("/metrics").text, APISERVER_METRIC, _apiserver_match)
    geopin = bucket_delta(geopin_before, geopin_after)
    apiserver = bucket_delta(apiserver_before, apiserver_after)
    result: dict[str, Any] = {
        "offered_rate": rate,
        "seconds": seconds,
        "pods": count,
        "created": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "mutated": mutated,
        "achieved_rate": len(latencies) / (finished - started),
        "geopin": {
            **quantiles_from_buckets(geopin, QUANTILES),
            "max_bucket_bound": max_bucket(geopin),
            "count": geopin[-1][1] if geopin else 0,
            "buckets": [[b, c] for b, c in geopin if b != float("inf")],
        },
        "apiserver": {
            **quantiles_from_buckets(apiserver, QUANTILES),
            "max_bucket_bound": max_bucket(apiserver),
            "count": apiserver[-1][1] if apiserver else 0,
            "buckets": [[b, c] for b, c in apiserver if b != float("inf")],
        },
        "client_round_trip": _exact(latencies),
    }
    say(
        f"  {rate}/s: {len(latencies)} Pods at {result['achieved_rate']:.1f}/s, {mutated} mutated, "
        f"geopin p99 {result['geopin']['p99']}, API server p99 {result['apiserver']['p99']}"
    )
    return result


def run(rates: Sequence[int], seconds: float) -> dict[str, Any]:
    figures: list[dict[str, Any]] = []
    with BenchEnv() as env:
        port = free_port()
        env.start_operator(
            "--admission-mechanism", "webhook",
            "--webhook-port", str(port),
            "--webhook-url", f"https://127.0.0.1:{port}",
            "--webhook-config", CONFIG,
        )  # fmt: skip
        env.create_namespaces([NAMESPACE])
        wait_until(
            lambda: env.core.read_namespaced_service_account("default", NAMESPACE),
            timeout=60,
            what="the default ServiceAccount of the namespace",
            ignore=(Exception,),
        )
        env.create_policy(mode="Admission")
        wait_until(
            lambda: env.policy_status().get("usableRegions"), timeout=60, what="the policy has decided", interval=0.2
        )
        # The webhook configuration is in place and geopin answers: a first Pod is pinned.
        endpoint = env.registries[HOME].endpoint

        def warm() -> bool:
            env.core.delete_collection_namespaced_pod(NAMESPACE)
            body = json.loads(_pod(0))
            body["metadata"] = {"generateName": "warm-"}
            created = env.http.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=body).json()
            return bool(created["spec"]["containers"][0]["image"].startswith(endpoint))

        wait_until(warm, timeout=60, interval=0.5, what="a Pod pinned through the webhook")
        say(f"webhook serving; policy {POLICY} in Admission mode")
        index = 1
        for rate in rates:
            figures.append(_one_rate(env, rate, seconds, index))
            index += int(rate * seconds)
        version = env.kubernetes_version()

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    table(
        f"admission latency, ms ({seconds:.0f}s per rate; histogram quantiles, max = highest bucket bound)",
        [
            "offered/s",
            "achieved/s",
            "mutated",
            "geopin p50",
            "p99",
            "max≤",
            "API server p50",
            "p99",
            "max≤",
            "client p50",
            "p99",
            "max",
        ],
        [
            [
                f["offered_rate"],
                f["achieved_rate"],
                f"{f['mutated']}/{f['pods']}",
                ms(f["geopin"]["p50"]),
                ms(f["geopin"]["p99"]),
                ms(f["geopin"]["max_bucket_bound"]),
                ms(f["apiserver"]["p50"]),
                ms(f["apiserver"]["p99"]),
                ms(f["apiserver"]["max_bucket_bound"]),
                ms(f["client_round_trip"]["p50"]),
                ms(f["client_round_trip"]["p99"]),
                ms(f["client_round_trip"]["max"]),
            ]
            for f in figures
        ],
    )
    parameters = {
        "rates_per_second": list(rates),
        "seconds_per_rate": seconds,
        "senders": SENDERS,
        "mechanism": "MutatingWebhookConfiguration (failurePolicy Ignore, timeout 2 s)",
        "pods": "bare Pods, one container on the policy's registry, never scheduled",
    }
    write_result(NAME, version, parameters, figures)
    return {"parameters": parameters, "figures": figures}
