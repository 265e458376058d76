"""The shipping artifacts without a cluster: the Helm chart rendered by the real helm, its values schema,
the plain manifests in deploy/, the Dockerfile (hadolint) and the runtime lock.

helm comes from hack/tools/build.sh (built from the Go module proxy once, then cached by pin hash).
Server-side validation of the same manifests is in tests/e2e/test_chart.py.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import geopin
from tests.harness.chart import ALL_FEATURES, CHART, ROOT, template_args, tools_bin

CRD_NAME = "registrypolicies.geopin.io.yaml"
RELEASE, NAMESPACE = "geopin", "geopin-system"
METRICS = (
    "geopin_replica_healthy",
    "geopin_active_region_info",
    "geopin_endpoint_switches_total",
    "geopin_probe_failures_total",
    "geopin_replication_pending_workloads",
)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools_bin() / "helm"), *args], check=check, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@functools.cache
def _render(sets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    out = helm(*template_args(RELEASE, NAMESPACE, sets)).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(*sets: str) -> list[dict[str, Any]]:
    return list(_render(tuple(sets)))


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["geopin"]
    result: dict[str, Any] = pod["containers"][0]
    return result


def rules_of(doc: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return [
        (group, resource, tuple(rule["verbs"]), tuple(rule.get("resourceNames", ())))
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]


# -- the chart and its sources ------------------------------------------------------------------------


def test_chart_crd_is_a_copy_of_deploy_crds() -> None:
    chart_crd = (CHART / "crds" / CRD_NAME).read_bytes()
    assert chart_crd == (ROOT / "deploy" / "crds" / CRD_NAME).read_bytes(), (
        f"charts/geopin/crds/{CRD_NAME} differs from deploy/crds/: cp deploy/crds/{CRD_NAME} charts/geopin/crds/"
    )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_NAME]


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == geopin.__version__
    image = container(render())["image"]
    assert image == f"ghcr.io/geopin/geopin:{geopin.__version__}"


def test_image_digest_wins_over_the_tag() -> None:
    digest = "sha256:" + "0" * 64
    assert container(render(f"image.digest={digest}", "image.tag=9.9"))["image"] == f"ghcr.io/geopin/geopin@{digest}"


def test_default_render_has_exactly_the_core_objects() -> None:
    assert kinds(render()) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",  # <name>-leader-election
            "Role",  # <name>-webhook-certificate
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    with_own_certificate = kinds(render())
    with_own_certificate.remove("Role")  # service.webhook.certSecret: no <name>-webhook-certificate
    with_own_certificate.remove("RoleBinding")
    assert kinds(render(*ALL_FEATURES)) == sorted(
        [
            *with_own_certificate,
            "ClusterRole",  # <name>-metrics-reader
            "ConfigMap",
            "NetworkPolicy",
            "PriorityClass",
            "PrometheusRule",
            "RegistryPolicy",
            "ServiceMonitor",
        ]
    )


# -- RBAC -----------------------------------------------------------------------------------------------


WORKLOAD_VERBS = ("get", "list", "watch", "patch")
EXPECTED_CLUSTER_RULES = [
    ("apps", "deployments", WORKLOAD_VERBS, ()),
    ("apps", "statefulsets", WORKLOAD_VERBS, ()),
    ("apps", "daemonsets", WORKLOAD_VERBS, ()),
    ("apps", "replicasets", WORKLOAD_VERBS, ()),
    ("batch", "cronjobs", WORKLOAD_VERBS, ()),
    ("geopin.io", "registrypolicies", ("get", "list", "watch", "patch"), ()),
    ("geopin.io", "registrypolicies/status", ("get", "patch"), ()),
    ("", "events", ("create", "list", "watch"), ()),
    ("", "nodes", ("list", "watch"), ()),
    ("", "namespaces", ("list", "watch"), ()),
    ("", "pods", ("get", "patch"), ()),  # rbac.rescuePods (default true): spec.failover.rescuePods
    # service.webhook.enabled (default true): geopin keeps its own MutatingWebhookConfiguration
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("create",), ()),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("get", "update"), ("geopin",)),
]


@pytest.mark.parametrize("sets", [(), ALL_FEATURES], ids=["defaults", "all-features"])
def test_no_wildcards_anywhere_in_rbac(sets: tuple[str, ...]) -> None:
    for doc in render(*sets):
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    assert "*" not in rule.get(field, []), f"{doc['kind']} {doc['metadata']['name']}: * in {field}"


def test_cluster_role_grants_exactly_what_geopin_calls() -> None:
    assert rules_of(only(render(), "ClusterRole")) == EXPECTED_CLUSTER_RULES


def test_every_workload_kind_geopin_patches_is_granted_and_nothing_else() -> None:
    """The chart follows the operator: a kind added to PATCH_KINDS without RBAC fails here, not in a cluster."""
    from geopin.core.workloads import KINDS, PATCH_KINDS

    rules = rules_of(only(render(), "ClusterRole"))
    granted = {(g, r) for g, r, verbs, _ in rules if verbs == WORKLOAD_VERBS and g != "geopin.io"}
    assert granted == {(KINDS[name].group, KINDS[name].plural) for name in PATCH_KINDS}


def test_webhook_rbac_args_and_ports_only_when_enabled() -> None:
    off = render("service.webhook.enabled=false")
    assert not any(a.startswith("--webhook") for a in container(off)["args"])
    assert "mutatingwebhookconfigurations" not in json.dumps(only(off, "ClusterRole"))
    assert [d["metadata"]["name"] for d in off if d["kind"] == "Role"] == ["geopin-leader-election"]
    docs = render("service.webhook.certSecret=geopin-webhook-tls")
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--webhook")] == [
        "--webhook-port=9443",
        "--webhook-config=geopin",
        f"--webhook-service={NAMESPACE}/geopin:443",
        "--webhook-failure-policy=Ignore",
        "--webhook-timeout-seconds=2",
        "--webhook-cert-dir=/etc/geopin/webhook",
    ]
    assert rules_of(only(docs, "ClusterRole"))[-2:] == [
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("create",), ()),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("get", "update"), ("geopin",)),
    ]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Role"] == ["geopin-leader-election"]
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-cert", "secret": {"secretName": "geopin-webhook-tls"}} in pod["volumes"]
    assert {"name": "webhook-cert", "mountPath": "/etc/geopin/webhook", "readOnly": True} in container(docs)[
        "volumeMounts"
    ]
    from geopin.cli.main import _parser

    parsed = _parser().parse_args(args)
    assert (parsed.webhook_port, parsed.webhook_config) == (9443, "geopin")
    assert parsed.webhook_service == f"{NAMESPACE}/geopin:443"
    assert (parsed.webhook_failure_policy, parsed.webhook_timeout_seconds) == ("Ignore", 2)


def test_the_webhook_is_on_by_default_and_serves_a_secret_geopin_keeps() -> None:
    docs = render()
    args = container(docs)["args"]
    assert "--webhook-port=9443" in args
    assert f"--webhook-cert-secret={NAMESPACE}/geopin-webhook-tls" in args
    assert not any(a.startswith("--webhook-cert-dir") for a in args)
    assert "/etc/geopin/webhook" not in json.dumps(only(docs, "Deployment"))  # read through the API
    assert rules_of(only(docs, "Role", "geopin-webhook-certificate")) == [
        ("", "secrets", ("create",), ()),
        ("", "secrets", ("get",), ("geopin-webhook-tls",)),
    ]
    binding = only(docs, "RoleBinding", "geopin-webhook-certificate")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "geopin", "namespace": NAMESPACE}]
    from geopin.cli.main import _parser

    assert _parser().parse_args(args).webhook_cert_secret == f"{NAMESPACE}/geopin-webhook-tls"


def test_webhook_failure_policy_and_timeout_follow_the_values() -> None:
    from geopin.cli.main import _parser

    docs = render(
        "service.webhook.enabled=true", "service.webhook.failurePolicy=Fail", "service.webhook.timeoutSeconds=7"
    )
    args = container(docs)["args"]
    assert "--webhook-failure-policy=Fail" in args
    assert "--webhook-timeout-seconds=7" in args
    parsed = _parser().parse_args(args)
    assert (parsed.webhook_failure_policy, parsed.webhook_timeout_seconds) == ("Fail", 7)


# -- NetworkPolicy and PriorityClass ---------------------------------------------------------------------


def _ingress_ports(policy: dict[str, Any]) -> list[tuple[str, ...]]:
    return [tuple(p["port"] for p in rule["ports"]) for rule in policy["spec"]["ingress"]]


def test_network_policy_only_when_enabled() -> None:
    assert "NetworkPolicy" not in kinds(render())
    assert "NetworkPolicy" not in kinds(render("service.webhook.enabled=true"))


def test_network_policy_admits_the_webhook_from_anywhere_and_metrics_from_the_selectors() -> None:
    docs = render(
        "networkPolicy.enabled=true",
        "service.webhook.enabled=true",
        r"networkPolicy.metrics.namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=monitoring",
        "networkPolicy.metrics.podSelector.matchExpressions[0].key=app.kubernetes.io/name",
        "networkPolicy.metrics.podSelector.matchExpressions[0].operator=In",
        "networkPolicy.metrics.podSelector.matchExpressions[0].values={prometheus}",
    )
    policy = only(docs, "NetworkPolicy")
    deployment = only(docs, "Deployment")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: API server, registries, ARM
    webhook, health, metrics = policy["spec"]["ingress"]
    assert webhook == {"ports": [{"port": "webhook", "protocol": "TCP"}]}  # no "from": every source
    assert health == {"ports": [{"port": "health", "protocol": "TCP"}]}
    assert metrics == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {
                    "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}]
                },
            }
        ],
        "ports": [{"port": "metrics", "protocol": "TCP"}],
    }
    # The named ports are the container's, so a changed port number follows.
    named = {p["name"] for p in container(docs)["ports"]}
    assert {port for ports in _ingress_ports(policy) for port in ports} == named == {"webhook", "health", "metrics"}


def test_network_policy_without_the_webhook_and_with_default_selectors() -> None:
    policy = only(render("networkPolicy.enabled=true", "service.webhook.enabled=false"), "NetworkPolicy")
    assert _ingress_ports(policy) == [("health",), ("metrics",)]
    # {} and {}: every pod in every namespace, but not sources outside the cluster's pods.
    assert policy["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {}, "podSelector": {}}]


def _pod_priority(docs: list[dict[str, Any]]) -> str | None:
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec.get("priorityClassName")


def test_priority_class_name_without_creating_one() -> None:
    assert _pod_priority(render()) is None
    assert "PriorityClass" not in kinds(render())
    docs = render("priorityClassName=system-cluster-critical")
    assert _pod_priority(docs) == "system-cluster-critical"
    assert "PriorityClass" not in kinds(docs)


def test_priority_class_created_with_the_release() -> None:
    docs = render("priorityClass.create=true")
    priority = only(docs, "PriorityClass")
    assert priority["metadata"]["name"] == RELEASE == _pod_priority(docs)
    assert "namespace" not in priority["metadata"]  # cluster-scoped
    assert (priority["value"], priority["preemptionPolicy"], priority["globalDefault"]) == (
        1000000,
        "PreemptLowerPriority",
        False,
    )
    named = render(
        "priorityClass.create=true",
        "priorityClassName=platform-operators",
        "priorityClass.value=2000",
        "priorityClass.preemptionPolicy=Never",
    )
    priority = only(named, "PriorityClass")
    assert priority["metadata"]["name"] == "platform-operators" == _pod_priority(named)
    assert (priority["value"], priority["preemptionPolicy"]) == (2000, "Never")
    assert isinstance(priority["value"], int)  # not 2e+03: Helm's numbers are floats


def test_secrets_only_when_enabled() -> None:
    def secret_rules(docs: list[dict[str, Any]]) -> list[tuple[str, str | None, tuple[str, ...]]]:
        return [
            (d["kind"], d["metadata"].get("namespace"), verbs)
            for d in docs
            if d["kind"] in ("ClusterRole", "Role")
            and not d["metadata"]["name"].endswith("-webhook-certificate")  # its own test, below
            for _group, resource, verbs, _names in rules_of(d)
            if resource == "secrets"
        ]

    assert secret_rules(render()) == []
    assert secret_rules(render("rbac.secrets.enabled=true")) == [("ClusterRole", None, ("get",))]
    scoped = render("rbac.secrets.enabled=true", "rbac.secrets.namespaces={geopin-system,platform}")
    assert secret_rules(scoped) == [("Role", "geopin-system", ("get",)), ("Role", "platform", ("get",))]
    bindings = [d for d in scoped if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-credentials")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["geopin-system", "platform"]
    assert all(
        b["subjects"] == [{"kind": "ServiceAccount", "name": "geopin", "namespace": NAMESPACE}] for b in bindings
    )


def test_leader_election_lease_rules_and_flag() -> None:
    docs = render()
    role = only(docs, "Role", "geopin-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == [
        ("coordination.k8s.io", "leases", ("create",), ()),
        ("coordination.k8s.io", "leases", ("get", "update"), ("geopin",)),
    ]
    assert "--leader-election" in container(docs)["args"]
    assert "--lease-name=geopin" in container(docs)["args"]

    off = render("leaderElection.enabled=false", "replicaCount=1")
    assert [d for d in off if "leases" in json.dumps(d.get("rules", []))] == []
    assert not any(a.startswith(("--leader-election", "--lease-name")) for a in container(off)["args"])


def test_bindings_point_at_the_service_account() -> None:
    docs = render()
    account = only(docs, "ServiceAccount")
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": only(docs, "ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert kinds(render("rbac.create=false")) == ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]


# -- the Deployment --------------------------------------------------------------------------------------


def test_security_context_is_restricted() -> None:
    docs = render()
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(docs)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 65532
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_ports_env_and_args_follow_the_values() -> None:
    c = container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert c["args"][:5] == ["run", "--metrics-port=8080", "--health-port=8081", "--workers=8", "--log-format=json"]
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]

    custom = container(
        render(
            "operator.metricsPort=9090",
            "operator.healthPort=9091",
            "operator.workers=3",
            "operator.logFormat=text",
            "operator.armEndpoint=https://management.chinacloudapi.cn",
            "operator.watchNamespaces={shop,billing}",
            "operator.verbose=true",
            "operator.nodeImageCredentialFix=202701.15",
            "service.webhook.enabled=false",
        )
    )
    assert {p["name"]: p["containerPort"] for p in custom["ports"]} == {"metrics": 9090, "health": 9091}
    assert custom["args"] == [
        "run",
        "--metrics-port=9090",
        "--health-port=9091",
        "--workers=3",
        "--log-format=text",
        "--leader-election",
        "--lease-name=geopin",
        "--admission-mechanism=webhook",
        "--node-image-credential-fix=202701.15",
        "--arm-endpoint=https://management.chinacloudapi.cn",
        "--namespace=shop",
        "--namespace=billing",
        "--verbose",
    ]


def test_every_run_flag_the_chart_passes_exists_in_the_cli() -> None:
    from geopin.cli.main import _parser

    args = container(render("operator.armEndpoint=https://x.example", "operator.watchNamespaces={a}"))["args"]
    parsed = _parser().parse_args(args)
    assert parsed.command == "run"
    assert (parsed.metrics_port, parsed.health_port, parsed.workers) == (8080, 8081, 8)
    assert (parsed.log_format, parsed.namespace, parsed.arm_endpoint) == ("json", ["a"], "https://x.example")
    assert parsed.leader_election is True
    assert parsed.lease_name == "geopin"


def test_two_replicas_spread_across_zones_and_nodes_with_a_pdb() -> None:
    docs = render()
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(s["labelSelector"]["matchLabels"] == selector for s in spread)
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    assert [d for d in render("replicaCount=1") if d["kind"] == "PodDisruptionBudget"] == []
    assert (
        "topologySpreadConstraints"
        not in only(render("topologySpread.enabled=false"), "Deployment")["spec"]["template"]["spec"]
    )


def test_service_has_metrics_and_the_reserved_webhook_port_only_when_enabled() -> None:
    assert only(render("service.webhook.enabled=false"), "Service")["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    docs = render()
    assert [p["name"] for p in only(docs, "Service")["spec"]["ports"]] == ["metrics", "webhook"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container(docs)["ports"]


def test_azure_workload_identity() -> None:
    client_id = "11111111-2222-3333-4444-555555555555"
    docs = render("azureWorkloadIdentity.enabled=true", f"azureWorkloadIdentity.clientId={client_id}")
    assert only(docs, "ServiceAccount")["metadata"]["annotations"] == {"azure.workload.identity/client-id": client_id}
    labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    plain = render()
    assert "annotations" not in only(plain, "ServiceAccount")["metadata"]
    assert "azure.workload.identity/use" not in only(plain, "Deployment")["spec"]["template"]["metadata"]["labels"]
    # enabled without a client ID is a schema error, not a silently broken identity
    result = helm("template", RELEASE, str(CHART), "--set", "azureWorkloadIdentity.enabled=true", check=False)
    assert result.returncode != 0
    assert "clientId" in result.stderr


# -- monitoring -------------------------------------------------------------------------------------------


def test_prometheus_rule_alerts() -> None:
    rule = only(render("prometheusRule.enabled=true", "prometheusRule.alertLabels.team=platform"), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "GeopinReplicaUnhealthy",
        "GeopinFailedOver",
        "GeopinNoHealthyReplica",
        "GeopinProbeErrors",
        "GeopinAwaitingReplication",
        "GeopinRepointStalled",
    }
    assert "geopin_replica_healthy" in alerts["GeopinReplicaUnhealthy"]["expr"]
    assert alerts["GeopinReplicaUnhealthy"]["for"] == "2m"
    failed_over = alerts["GeopinFailedOver"]["expr"]
    assert "increase(geopin_endpoint_switches_total" in failed_over
    assert 'geopin_active_region_info{region="global"}' in failed_over
    assert re.search(r"sum by \(policy\) \(geopin_replica_healthy\) == 0", alerts["GeopinNoHealthyReplica"]["expr"])
    assert 'geopin_probe_failures_total{reason!="throttled"}' in alerts["GeopinProbeErrors"]["expr"]
    assert alerts["GeopinProbeErrors"]["expr"].endswith("> 0.1")
    assert "geopin_replication_pending_workloads" in alerts["GeopinAwaitingReplication"]["expr"]
    assert alerts["GeopinAwaitingReplication"]["for"] == "15m"
    assert "geopin_template_repoints_pending" in alerts["GeopinRepointStalled"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["team"] == "platform"
        assert alert["labels"]["severity"] in ("warning", "critical")
        # Prometheus templates survive Helm's own templating
        assert "{{ $labels.policy }}" in alert["annotations"]["description"]


def test_service_monitor_scrapes_the_metrics_port() -> None:
    docs = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=kube-prometheus-stack")
    monitor = only(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert [p["name"] for p in only(docs, "Service")["spec"]["ports"]] == ["metrics", "webhook"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= only(docs, "Service")["metadata"]["labels"].items()


def test_secure_metrics_off_by_default() -> None:
    docs = render("serviceMonitor.enabled=true")
    assert not any(a.startswith("--metrics-secure") or a.startswith("--metrics-cert") for a in container(docs)["args"])
    assert "tokenreviews" not in json.dumps(only(docs, "ClusterRole"))
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert not {"scheme", "tlsConfig", "bearerTokenFile"} & set(endpoint)


def test_secure_metrics_flags_rbac_reader_role_and_service_monitor() -> None:
    from geopin.cli.main import _parser

    docs = render("metrics.secure=true", "serviceMonitor.enabled=true")
    args = container(docs)["args"]
    assert "--metrics-secure" in args
    assert not any(a.startswith("--metrics-cert-dir") for a in args)
    parsed = _parser().parse_args(args)
    assert (parsed.metrics_secure, parsed.metrics_cert_dir) == (True, None)
    assert rules_of(only(docs, "ClusterRole", "geopin")) == [
        *EXPECTED_CLUSTER_RULES,
        ("authentication.k8s.io", "tokenreviews", ("create",), ()),
        ("authorization.k8s.io", "subjectaccessreviews", ("create",), ()),
    ]
    reader = only(docs, "ClusterRole", "geopin-metrics-reader")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert "metrics-cert" not in json.dumps(only(docs, "Deployment"))


def test_secure_metrics_with_a_certificate_secret_is_verified_by_the_service_monitor() -> None:
    from geopin.cli.main import _parser

    docs = render("metrics.secure=true", "metrics.certSecret=geopin-metrics-tls", "serviceMonitor.enabled=true")
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--metrics-")] == [
        "--metrics-port=8080",
        "--metrics-secure",
        "--metrics-cert-dir=/etc/geopin/metrics",
    ]
    assert _parser().parse_args(args).metrics_cert_dir == "/etc/geopin/metrics"
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "metrics-cert", "secret": {"secretName": "geopin-metrics-tls"}} in pod["volumes"]
    assert {"name": "metrics-cert", "mountPath": "/etc/geopin/metrics", "readOnly": True} in container(docs)[
        "volumeMounts"
    ]
    assert only(docs, "ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"] == {
        "serverName": f"geopin.{NAMESPACE}.svc",
        "ca": {"secret": {"name": "geopin-metrics-tls", "key": "ca.crt"}},
    }


def test_host_network_binds_the_pod_ip_only() -> None:
    from geopin.cli.main import _parser

    default = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert not {"hostNetwork", "dnsPolicy"} & set(default)
    assert not any(a.startswith("--bind-address") for a in container(render())["args"])
    docs = render("hostNetwork=true")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    args = container(docs)["args"]
    assert args[:2] == ["run", "--bind-address=$(POD_IP)"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container(docs)["env"]
    assert _parser().parse_args(args).bind_address == "$(POD_IP)"  # the kubelet expands it
    # Host ports: a surge pod would find every node taken, so the rollout replaces one pod at a time.
    rolling = only(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxUnavailable": 1, "maxSurge": 0}
    assert only(render(), "Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_no_metrics_reader_role_without_rbac() -> None:
    assert "ClusterRole" not in kinds(render("metrics.secure=true", "rbac.create=false"))


def test_grafana_dashboard_has_a_panel_for_every_alerted_metric() -> None:
    config_map = only(render("grafanaDashboard.enabled=true"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["geopin.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (*METRICS, "geopin_pinned_workloads", "geopin_probe_duration_seconds_bucket"):
        assert metric in exprs, metric
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_sample_policy() -> None:
    policy = only(render("samplePolicy.enabled=true"), "RegistryPolicy")
    assert policy["apiVersion"] == "geopin.io/v1alpha1"
    assert "namespace" not in policy["metadata"]  # cluster-scoped
    assert policy["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # the operator's own parser accepts it (the CRD schema is checked on the API server in e2e)
    from geopin.core.policy import from_spec

    assert from_spec(policy["metadata"]["name"], policy["spec"]).registry == "contoso.azurecr.io"


def _closed(node: Any) -> None:
    """Unknown fields are errors, as with `kubectl apply --validate=strict` (the API server would prune them)."""
    if isinstance(node, dict):
        open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
        if node.get("properties") and not open_ended:
            node["additionalProperties"] = False
        for child in node.values():
            _closed(child)
    elif isinstance(node, list):
        for child in node:
            _closed(child)


@pytest.mark.parametrize(("extra", "valid"), [((), True), (("samplePolicy.spec.mode=Bogus",), False)])
def test_kubeconform_validates_the_sample_policy_against_the_crd(
    tmp_path: Path, extra: tuple[str, ...], valid: bool
) -> None:
    """Offline: kubeconform with a JSON schema made from the chart's CRD (it cannot download any here)."""
    crd = yaml.safe_load((CHART / "crds" / CRD_NAME).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    _closed(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    (tmp_path / "registrypolicy_v1alpha1.json").write_text(json.dumps(schema))
    policy = only(render("samplePolicy.enabled=true", *extra), "RegistryPolicy")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    result = subprocess.run(
        [
            str(tools_bin() / "kubeconform"),
            *("-strict", "-summary", "-output", "json"),
            *("-schema-location", str(tmp_path / "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json")),
            str(tmp_path / "policy.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    summary = json.loads(result.stdout)["summary"]
    assert summary["valid" if valid else "invalid"] == 1, result.stdout
    assert (result.returncode == 0) == valid


# -- values, schema and documentation ----------------------------------------------------------------------


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _is_group(node: dict[str, Any]) -> bool:
    """A group of values (documented one by one), not a value: an inline object with a closed set of keys.

    Free-form objects, lists and shared definitions ($ref: ports, resource lists) are single values.
    """
    return "$ref" not in node and node.get("additionalProperties") is False


def _documented_paths(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> list[str]:
    """Every value path the schema names, groups included."""
    paths = []
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.append(path)
        if _is_group(child):
            paths += _documented_paths(schema, child, path + ".")
    return paths


def _value_paths(values: dict[str, Any], schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.append(path)
        child = node.get("properties", {}).get(key)
        assert child is not None, f"values.yaml has {path}, which values.schema.json does not describe"
        if _is_group(child):
            assert isinstance(value, dict), path
            paths += _value_paths(value, schema, child, path + ".")
    return paths


def test_every_value_is_in_the_schema_and_every_schema_property_has_a_default() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert sorted(_value_paths(_values(), schema, schema)) == sorted(_documented_paths(schema, schema))


def test_the_defaults_satisfy_the_schema_and_the_schema_is_strict() -> None:
    import jsonschema

    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_values())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({**_values(), "replicaCount": "abc"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({**_values(), "operator": {"metricPort": 8080}})


def test_every_value_has_a_comment_in_values_yaml() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = _schema()
    documented = set(_documented_paths(schema, schema))
    stack: list[tuple[int, str]] = []
    seen = set()
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        if path not in documented:
            continue
        seen.add(path)
        above = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        assert above.startswith("#"), f"values.yaml line {number + 1}: {path} has no comment above it"
    assert seen == documented


def test_the_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text().partition("\n## Values\n")[2]
    assert readme, "charts/geopin/README.md has no '## Values' section"
    schema = _schema()
    table = {m.group(1) for m in re.finditer(r"^\| `([\w.]+)` \|", readme, re.MULTILINE)}
    leaves = {
        p
        for p in _documented_paths(schema, schema)
        if not any(q.startswith(p + ".") for q in _documented_paths(schema, schema))
    }
    assert leaves <= table, f"missing from charts/geopin/README.md: {sorted(leaves - table)}"
    assert table <= leaves, f"README documents values that do not exist: {sorted(table - leaves)}"


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=abc",
        "operator.logFormat=xml",
        "operator.metricPort=9090",  # a typo: unknown keys are rejected
        "image.pullPolicy=Sometimes",
        "topologySpread.zoneWhenUnsatisfiable=Maybe",
        "azureWorkloadIdentity.clientId=not-a-guid",
        "operator.nodeImageCredentialFix=2026-07",
        "priorityClass.value=1000000001",  # above the user-defined maximum
        "priorityClass.preemptionPolicy=Sometimes",
        "priorityClassName=Not_A_Name",
        "networkPolicy.metrics.podSelector.matchLabel.app=prometheus",  # a typo of matchLabels
        "networkPolicy.metrics.namespaceSelector.matchExpressions[0].key=team",  # no operator
        "service.webhook.failurePolicy=Warn",
        "service.webhook.timeoutSeconds=31",  # the API server's maximum is 30
        "service.webhook.timeoutSeconds=0",
        "metrics.secure=yes",
        "metrics.certSecret=Not_A_Secret",
        "hostNetwork=yes",
    ],
)
def test_helm_rejects_bad_values(bad: str) -> None:
    for command in (["lint", str(CHART)], ["template", RELEASE, str(CHART)]):
        result = helm(*command, "--set", bad, check=False)
        assert result.returncode != 0, f"helm {command[0]} accepted --set {bad}"
        assert "values don't meet the specifications of the schema" in (result.stdout + result.stderr)


def test_helm_lint_passes_strict() -> None:
    for sets in ((), ALL_FEATURES):
        args = ["lint", "--strict", str(CHART)]
        for s in sets:
            args += ["--set", s]
        result = helm(*args, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


# -- deploy/ ------------------------------------------------------------------------------------------------


def test_deploy_manifests_are_in_sync_with_the_chart() -> None:
    result = subprocess.run(
        [str(ROOT / "hack" / "render-deploy.sh"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_render_deploy_check_detects_drift(tmp_path: Path) -> None:
    script = ROOT / "hack" / "render-deploy.sh"
    target = tmp_path / "geopin.yaml"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "RENDER_DEPLOY_OUT": str(target)}
    go = shutil.which("go")
    if go:
        env["PATH"] = f"{Path(go).parent}:{env['PATH']}"
    subprocess.run([str(script)], check=True, env=env, capture_output=True, timeout=120)
    assert target.read_text() == (ROOT / "deploy" / "geopin.yaml").read_text()
    assert subprocess.run([str(script), "--check"], env=env, capture_output=True, timeout=120).returncode == 0
    target.write_text(target.read_text().replace("replicas: 2", "replicas: 3"))
    drift = subprocess.run([str(script), "--check"], env=env, capture_output=True, text=True, timeout=120)
    assert drift.returncode == 1
    assert "+  replicas: 2" in drift.stderr


def test_deploy_manifests_are_the_default_render_plus_the_namespace() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "geopin.yaml").read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "geopin", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    assert docs[1:] == render()
    assert all(d["kind"] != "CustomResourceDefinition" for d in docs)  # deploy/crds/ is the CRD's home


# -- the image -----------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=docker\.io/library/python:3\.11\.\d+-slim-bookworm$", text, re.MULTILINE)
    assert 'org.opencontainers.image.base.name="${PYTHON_IMAGE}"' in text
    assert text.count("FROM ${PYTHON_IMAGE}") == 2  # multi-stage, one pinned base
    assert re.search(r"^USER 65532:65532$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["geopin"]' in text
    assert 'CMD ["run"]' in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    assert "compileall" in text
    for label in ("title", "version", "revision", "source", "licenses", "created"):
        assert f"org.opencontainers.image.{label}=" in text
    lock_has_hashes = "--hash=sha256:" in (ROOT / "requirements" / "runtime.lock").read_text()
    runs = " ".join(text.replace("\\\n", " ").split())
    runtime_install = re.search(r"pip install [^&]*-r /src/requirements/runtime\.lock", runs)
    assert runtime_install, "the dependencies are installed from requirements/runtime.lock"
    assert ("--require-hashes" in runtime_install.group(0)) == lock_has_hashes
    assert "--no-deps" in text


def test_runtime_lock_pins_every_package_with_hashes() -> None:
    """The Dockerfile's `pip install --require-hashes` needs a hash for every pin (uv pip compile --generate-hashes)."""
    for name in ("runtime.lock", "build.lock"):
        text = (ROOT / "requirements" / name).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+", text, re.MULTILINE)
        blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.MULTILINE)[1:]
        assert pins
        assert len(blocks) == len(pins)
        missing = [block.split()[0] for block in blocks if "--hash=sha256:" not in block]
        assert missing == [], f"{name}: no hash for {missing}"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"Dockerfile", "pyproject.toml", "README.md", "requirements/runtime.lock",
                       "requirements/build.lock", "operator"}  # fmt: skip
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    sources = {s for line in copied for s in line.split()}
    assert sources <= allowed, sources - allowed


def test_admission_policy_rbac_only_when_enabled() -> None:
    off = render()
    assert "mutatingadmissionpolicies" not in json.dumps(only(off, "ClusterRole"))
    assert "--admission-mechanism=webhook" in container(off)["args"]
    on = render("admissionPolicy.enabled=true")
    assert "--admission-mechanism=auto" in container(on)["args"]
    rules = only(on, "ClusterRole")["rules"]
    assert {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
        "verbs": ["get", "create", "update", "delete"],
    } in rules
    params = [d for d in on if d["kind"] == "Role" and d["metadata"]["name"].endswith("-admission-params")]
    assert len(params) == 1
    assert params[0]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update", "delete"]}
    ]


def test_secret_write_verbs_only_for_pull_secret_extend() -> None:
    read_only = json.dumps(only(render("rbac.secrets.enabled=true"), "ClusterRole"))
    assert '"create"' not in read_only.split('"secrets"')[1].split("}")[0]
    rules = only(render("rbac.secrets.enabled=true", "rbac.secrets.write=true"), "ClusterRole")["rules"]
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "create", "update", "delete"],
    } in rules
