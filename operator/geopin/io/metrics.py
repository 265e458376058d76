"""Every Prometheus metric geopin exports, defined once (names and labels are the public contract, api.md)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ACTIVE_REGION_INFO",
    "ADMISSION_DURATION",
    "ADMISSION_INVALID_REVIEWS",
    "ENDPOINT_SWITCHES",
    "PINNED_WORKLOADS",
    "PODS_REDIRECTED",
    "PODS_RESCUED",
    "PROBE_DURATION",
    "PROBE_FAILURES",
    "REPLICATION_PENDING",
    "REPLICA_HEALTHY",
    "TEMPLATE_REPOINTS_PENDING",
    "WORKLOAD_REWRITES",
    "serve",
]

registry: CollectorRegistry = REGISTRY

ENDPOINT_SWITCHES = Counter(
    "geopin_endpoint_switches_total",
    "Times a policy's active endpoint changed.",
    ["policy", "registry", "from_region", "to_region", "reason"],
)
REPLICA_HEALTHY = Gauge(
    "geopin_replica_healthy",
    "1 when the replica is healthy by the probe state machine, else 0.",
    ["policy", "registry", "region"],
)
PROBE_DURATION = Histogram(
    "geopin_probe_duration_seconds",
    "Duration of one replica probe.",
    ["policy", "region", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
PROBE_FAILURES = Counter(
    "geopin_probe_failures_total",
    "Failed replica probes by reason (timeout, connect, tls, http_5xx, throttled, unauthorized, not_found, "
    "data_endpoint).",
    ["policy", "region", "reason"],
)
ACTIVE_REGION_INFO = Gauge(
    "geopin_active_region_info",
    "Always 1; the labels say which region and endpoint a policy's workloads point to.",
    ["policy", "registry", "region", "endpoint"],
)
PINNED_WORKLOADS = Gauge(
    "geopin_pinned_workloads",
    "Workloads whose images geopin currently points to a region (or global).",
    ["policy", "region"],
)
WORKLOAD_REWRITES = Counter(
    "geopin_workload_rewrites_total",
    "Writes to workloads by result (pinned, restored, conflict, error).",
    ["policy", "kind", "result"],
)
REPLICATION_PENDING = Gauge(
    "geopin_replication_pending_workloads",
    "Workloads kept where they are because their image has not replicated to the target region yet.",
    ["policy", "region"],
)
PODS_REDIRECTED = Counter(
    "geopin_pods_redirected_total",
    "Pods pinned at admission to the replica in use because their template's replica is unusable (Redirect).",
    ["policy", "from_region", "to_region"],
)
PODS_RESCUED = Counter(
    "geopin_pods_rescued_total",
    "Pods whose containers waiting on a pull from an unusable replica were patched in place to the replica in use.",
    ["policy", "from_region", "to_region"],
)
TEMPLATE_REPOINTS_PENDING = Gauge(
    "geopin_template_repoints_pending",
    "Workload templates a switch still has to move, waiting for their turn (spec.failover.maxRepointsPerSecond).",
    ["policy"],
)
ADMISSION_DURATION = Histogram(
    "geopin_admission_duration_seconds",
    "Time geopin spends inside one admission review.",
    ["result"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
ADMISSION_INVALID_REVIEWS = Counter(
    "geopin_admission_invalid_reviews_total",
    "Admission reviews the webhook could not read (too_large, malformed); each Pod was admitted unchanged.",
    ["reason"],
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on a daemon thread (prometheus-client's own server)."""
    start_http_server(port, addr=address, registry=registry)
