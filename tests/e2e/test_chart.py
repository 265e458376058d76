"""The Helm chart against the real API server: lint, render, server-side dry-run of every document, and
the real operator running with nothing but the chart's RBAC.

helm comes from hack/tools/build.sh, kubectl from hack/controlplane/build.sh. kubeconform needs JSON
schemas it would download (not possible here), so every rendered document is validated by the
kube-apiserver itself instead: `kubectl apply --dry-run=server --validate=strict` (unknown or
mistyped fields are errors), in a namespace that warns on Pod Security "restricted" violations.

The Prometheus Operator's CRDs are not part of this control plane. The test installs minimal
ServiceMonitor and PrometheusRule CRDs whose schemas are a subset of the upstream ones (the fields
the chart uses, with upstream's types, required fields and duration pattern), so those documents
are checked structurally by the same API server; PromQL itself is not parsed here.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client

from tests.harness.chart import ALL_FEATURES, CHART, ROOT, template_args, tools_bin
from tests.harness.controlplane import find_binaries
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

NAMESPACE = "geopin-chart"
VALUE_SETS = {"defaults": (), "all-features": ALL_FEATURES, "secrets-per-namespace": (
    "rbac.secrets.enabled=true", f"rbac.secrets.namespaces={{{NAMESPACE},default}}", "replicaCount=1",
), "network-policy-and-named-priority-class": (
    "networkPolicy.enabled=true", "networkPolicy.metrics.podSelector.matchLabels.app=prometheus",
    "priorityClass.create=true", "priorityClassName=geopin-chart-critical", "priorityClass.value=1000000000",
    "priorityClass.preemptionPolicy=Never",
)}  # fmt: skip

DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(plural: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                            },
                        }
                    },
                }
            ],
        },
    }


MONITORING_CRDS = [
    _crd(
        "servicemonitors",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
                            "bearerTokenFile": {"type": "string"},
                            "tlsConfig": {
                                "type": "object",
                                "properties": {
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "serverName": {"type": "string"},
                                    "ca": {
                                        "type": "object",
                                        "properties": {
                                            "secret": {
                                                "type": "object",
                                                "required": ["key"],
                                                "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
    _crd(
        "prometheusrules",
        "PrometheusRule",
        {
            "type": "object",
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"x-kubernetes-int-or-string": True},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
]


class Tools:
    def __init__(self, control_plane: ControlPlane) -> None:
        self.helm_bin = tools_bin() / "helm"
        self.kubectl_bin = find_binaries() / "kubectl"
        self.kubeconfig = str(control_plane.kubeconfig)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.helm_bin), "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def render(self, release: str, namespace: str, sets: tuple[str, ...]) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.helm(*template_args(release, namespace, sets)).stdout) if d]

    def dry_run(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Server-side dry-run apply of one document: (the object as the API server would store it, stderr)."""
        result = self.kubectl(
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "json",
            "-f",
            "-",
            stdin=json.dumps(doc),
            check=False,
        )
        assert result.returncode == 0, f"{doc['kind']} {doc['metadata']['name']} rejected:\n{result.stderr}"
        stored: dict[str, Any] = json.loads(result.stdout)
        return stored, result.stderr


def _kept(sent: Any, stored: Any) -> bool:
    """Everything sent is in what the API server stored (which may add defaults): nothing pruned."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(k in stored and _kept(v, stored[k]) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(sent) == len(stored) and all(map(_kept, sent, stored))
    return bool(sent == stored)


def _ensure_namespace(tools: Tools, name: str, labels: dict[str, str] | None = None) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    tools.kubectl("apply", "-f", "-", stdin=json.dumps(body))


@pytest.fixture(scope="module")
def tools(control_plane: ControlPlane) -> Tools:
    tools = Tools(control_plane)
    install_crd(control_plane)  # deploy/crds/ (byte-identical to the chart's crds/, a unit test checks)
    for crd in MONITORING_CRDS:
        tools.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
    for crd in MONITORING_CRDS:
        tools.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd['metadata']['name']}")
    # "restricted" warnings: a Deployment whose pod template breaks the policy gets a Warning at admission.
    _ensure_namespace(
        tools,
        NAMESPACE,
        {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"},
    )
    return tools


@pytest.mark.parametrize("sets", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_helm_lint_with_the_cluster_version(tools: Tools, sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    tools.helm(*args)


@pytest.mark.parametrize("sets", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_every_rendered_document_passes_server_side_dry_run(tools: Tools, sets: tuple[str, ...]) -> None:
    docs = tools.render("geopin", NAMESPACE, sets)
    assert docs
    for doc in docs:
        stored, stderr = tools.dry_run(doc)
        assert "Warning" not in stderr, f"{doc['kind']} {doc['metadata']['name']}: {stderr}"
        assert (stored["kind"], stored["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
        if doc["kind"] == "Deployment":
            # nothing pruned or dropped: every field the chart sets is a field the API server keeps
            sent, kept = doc["spec"]["template"]["spec"], stored["spec"]["template"]["spec"]
            assert kept["securityContext"] == sent["securityContext"]
            assert kept["containers"][0]["securityContext"] == sent["containers"][0]["securityContext"]
            assert kept["topologySpreadConstraints"] == sent["topologySpreadConstraints"]
            assert kept.get("priorityClassName") == sent.get("priorityClassName")
        if doc["kind"] in ("PrometheusRule", "ServiceMonitor", "RegistryPolicy"):
            assert _kept(doc["spec"], stored["spec"]), f"{doc['kind']}: fields pruned or changed by the API server"
        if doc["kind"] == "NetworkPolicy":
            assert stored["spec"] == doc["spec"]
        if doc["kind"] == "PriorityClass":
            assert (stored["value"], stored["preemptionPolicy"]) == (doc["value"], doc["preemptionPolicy"])


def test_the_charts_priority_class_gives_its_pods_their_priority(tools: Tools) -> None:
    """Created for real (it is cluster-scoped), then a Pod from the Deployment's template is admitted
    (server-side dry-run): the API server's Priority admission resolves the class into spec.priority."""
    name = "geopin-chart-priority"
    sets = ("priorityClass.create=true", f"priorityClassName={name}", "priorityClass.value=4242")
    docs = tools.render("geopin", NAMESPACE, sets)
    priority = next(d for d in docs if d["kind"] == "PriorityClass")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    template = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": "geopin-priority",
           "namespace": NAMESPACE}, "spec": template["spec"]}  # fmt: skip
    tools.kubectl("apply", "-f", "-", stdin=json.dumps(account))
    tools.kubectl("apply", "-f", "-", stdin=json.dumps(priority))
    try:
        stored, stderr = tools.dry_run(pod)
        assert "Warning" not in stderr, stderr
        assert (stored["spec"]["priorityClassName"], stored["spec"]["priority"]) == (name, 4242)
        assert stored["spec"]["preemptionPolicy"] == "PreemptLowerPriority"
    finally:
        tools.kubectl("delete", "priorityclass", name, "--ignore-not-found")
        tools.kubectl("delete", "-n", NAMESPACE, "serviceaccount", account["metadata"]["name"], "--ignore-not-found")


def test_the_pod_security_check_would_catch_a_privileged_template(tools: Tools) -> None:
    """The "no Warning" assertion above can fail: a template without the restricted settings is flagged."""
    deployment = next(d for d in tools.render("geopin", NAMESPACE, ()) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["securityContext"]["capabilities"]
    _stored, stderr = tools.dry_run(deployment)
    assert "would violate PodSecurity" in stderr
    assert "allowPrivilegeEscalation" in stderr


def test_a_bad_value_is_rejected_before_anything_reaches_the_cluster(tools: Tools) -> None:
    result = tools.helm("template", "geopin", str(CHART), "--set", "replicaCount=abc", check=False)
    assert result.returncode != 0
    assert "replicaCount" in result.stderr


def test_helm_install_server_dry_run_renders_the_notes(tools: Tools) -> None:
    """helm's own install path against this API server (OpenAPI validation, CRD check, NOTES.txt)."""
    result = tools.helm("install", "geopin", str(CHART), "--namespace", NAMESPACE, "--dry-run=server", "--skip-crds")
    notes = result.stdout.partition("NOTES:")[2]
    assert f"kubectl -n {NAMESPACE} get lease geopin" in notes
    assert "*.*.geo.azurecr.io" in notes
    assert "{{" not in notes


# -- the real operator with only the chart's RBAC ------------------------------------------------------------

RBAC_RELEASE = "geopin-chart-e2e"
OPERATOR_NAMESPACE = (
    "geopin-system"  # tests.harness.geopin_process.Operator runs with --operator-namespace geopin-system
)
SA_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RBAC_RELEASE}"
REGISTRY = "chartrbac.azurecr.io"
WORKLOAD_NAMESPACE = "chart-rbac"
POLICY = "chart-rbac"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="module")
def rbac_docs(tools: Tools) -> Iterator[list[dict[str, Any]]]:
    """The chart's ServiceAccount and RBAC (defaults) applied for real; removed afterwards."""
    _ensure_namespace(tools, OPERATOR_NAMESPACE)
    docs = [d for d in tools.render(RBAC_RELEASE, OPERATOR_NAMESPACE, ()) if d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in docs} == set(RBAC_KINDS)
    stream = "\n---\n".join(json.dumps(d) for d in docs)
    tools.kubectl("apply", "-f", "-", stdin=stream)
    try:
        yield docs
    finally:
        tools.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=stream, check=False)


def _can(tools: Tools, verb: str, resource: str, namespace: str | None = None) -> bool:
    resource, _, subresource = resource.partition(":")
    args = ["auth", "can-i", verb, resource, f"--as={SA_USER}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    result = tools.kubectl(*args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_the_service_account_can_do_exactly_what_geopin_needs(tools: Tools, rbac_docs: list[dict[str, Any]]) -> None:
    allowed = [
        ("get", "deployments.apps"),
        ("list", "deployments.apps"),
        ("watch", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("watch", "statefulsets.apps"),
        ("patch", "daemonsets.apps"),
        ("list", "replicasets.apps"),
        ("patch", "cronjobs.batch"),
        ("list", "registrypolicies.geopin.io"),
        ("watch", "registrypolicies.geopin.io"),
        ("patch", "registrypolicies.geopin.io"),
        ("patch", "registrypolicies.geopin.io:status"),
        ("create", "events"),
        ("list", "events"),
        ("watch", "events"),
        ("list", "nodes"),
        ("watch", "nodes"),
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("get", "pods"),  # rbac.rescuePods (default true)
        ("patch", "pods"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),  # the webhook is on by default
    ]
    denied = [
        ("update", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("create", "deployments.apps"),
        ("update", "registrypolicies.geopin.io"),
        ("delete", "registrypolicies.geopin.io"),
        ("create", "registrypolicies.geopin.io"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("list", "pods"),
        ("delete", "events"),
        ("patch", "nodes"),
        ("update", "registrypolicies.geopin.io:status"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "jobs.batch"),
        ("update", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),  # only the release's own (below)
        ("create", "secrets"),  # cluster-wide: no; only in the release namespace (below)
        ("create", "leases.coordination.k8s.io"),  # cluster-wide: no; only in the release namespace (below)
    ]
    assert [(v, r) for v, r in allowed if not _can(tools, v, r)] == []
    assert [(v, r) for v, r in denied if _can(tools, v, r)] == []
    # leader election: its own Lease in its own namespace, nothing else
    assert _can(tools, "create", "leases.coordination.k8s.io", OPERATOR_NAMESPACE)
    assert _can(tools, "get", f"leases.coordination.k8s.io/{RBAC_RELEASE}", OPERATOR_NAMESPACE)
    assert _can(tools, "update", f"leases.coordination.k8s.io/{RBAC_RELEASE}", OPERATOR_NAMESPACE)
    assert not _can(tools, "update", "leases.coordination.k8s.io/kube-scheduler", OPERATOR_NAMESPACE)
    assert not _can(tools, "delete", f"leases.coordination.k8s.io/{RBAC_RELEASE}", OPERATOR_NAMESPACE)
    assert not _can(tools, "create", "leases.coordination.k8s.io", "kube-system")
    # the webhook's own configuration and its shared serving Secret, nothing else
    hooks = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
    assert _can(tools, "update", f"{hooks}/{RBAC_RELEASE}")
    assert not _can(tools, "update", f"{hooks}/someone-elses")
    assert _can(tools, "create", "secrets", OPERATOR_NAMESPACE)
    assert _can(tools, "get", f"secrets/{RBAC_RELEASE}-webhook-tls", OPERATOR_NAMESPACE)
    assert not _can(tools, "get", "secrets/acr-pull", OPERATOR_NAMESPACE)
    assert not _can(tools, "create", "secrets", "kube-system")


def _token_kubeconfig(control_plane: ControlPlane, tools: Tools, path: Path) -> Path:
    token = tools.kubectl("create", "token", RBAC_RELEASE, "-n", OPERATOR_NAMESPACE, "--duration=1h").stdout.strip()
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    config["users"] = [{"name": RBAC_RELEASE, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = RBAC_RELEASE
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_pins_and_restores_with_only_the_charts_rbac(
    control_plane: ControlPlane,
    ca: CA,
    tools: Tools,
    rbac_docs: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """`geopin run` with the chart's arguments, authenticated as the chart's ServiceAccount (a real token):
    it takes the Lease, pins a Deployment, writes the policy status, fails over when the home replica is
    killed, restores on deletion and removes its finalizer, and the API server never answers 403."""
    deployment_args = next(d for d in tools.render(RBAC_RELEASE, OPERATOR_NAMESPACE, ()) if d["kind"] == "Deployment")[
        "spec"
    ]["template"]["spec"]["containers"][0]["args"]
    chart_flags = [a for a in deployment_args if a.startswith(("--leader-election", "--lease-name", "--workers"))]
    assert chart_flags == ["--workers=8", "--leader-election", f"--lease-name={RBAC_RELEASE}"]

    api: Any = control_plane.api_client()
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    coordination: Any = client.CoordinationV1Api(api)
    _ensure_namespace(tools, WORKLOAD_NAMESPACE)
    original = f"{REGISTRY}/chart/app:1"
    apps.create_namespaced_deployment(WORKLOAD_NAMESPACE, deployment("app", original))
    audit_start = control_plane.audit_line_count()
    with RegistrySet(ca) as registries:
        east = registries["eastus"].endpoint
        custom.create_cluster_custom_object(
            "geopin.io",
            "v1alpha1",
            "registrypolicies",
            {
                "apiVersion": "geopin.io/v1alpha1",
                "kind": "RegistryPolicy",
                "metadata": {"name": POLICY},
                "spec": {
                    "registry": REGISTRY,
                    "region": "eastus",
                    "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                    "probe": {"caBundle": ca.cert_pem.decode()},
                    "replicationCheck": False,
                },
            },
        )
        operator = Operator(control_plane, tmp_path, user=RBAC_RELEASE, env={"HOSTNAME": f"{RBAC_RELEASE}-pod"})
        operator.kubeconfig = _token_kubeconfig(control_plane, tools, tmp_path / "sa.kubeconfig")

        def image() -> str:
            return str(
                apps.read_namespaced_deployment("app", WORKLOAD_NAMESPACE).spec.template.spec.containers[0].image
            )

        def policy_gone() -> bool:
            try:
                custom.get_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", POLICY)
            except client.ApiException as e:
                return bool(e.status == 404)
            return False

        operator.start(*chart_flags)
        try:
            try:
                wait_until(lambda: image() != original, timeout=60, what="Deployment pinned")
            except WaitTimeout as e:
                raise AssertionError(f"{e}\noperator log:\n{operator.log()[-6000:]}") from None
            wait_until(lambda: image() == f"{east}/chart/app:1", timeout=60, what="Deployment pinned to eastus")
            lease = coordination.read_namespaced_lease(RBAC_RELEASE, OPERATOR_NAMESPACE)
            assert lease.spec.holder_identity.startswith(f"{RBAC_RELEASE}-pod")

            def status_written() -> bool:
                policy = custom.get_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", POLICY)
                return (policy.get("status") or {}).get("activeRegion") == "eastus"

            wait_until(status_written, timeout=30, what="policy status written by the ServiceAccount")
            registries["eastus"].stop()
            west = registries["westus"].endpoint
            wait_until(lambda: image() == f"{west}/chart/app:1", timeout=60, what="failover to westus")
            custom.delete_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", POLICY)
            wait_until(lambda: image() == original, timeout=60, what="Deployment restored")
            wait_until(policy_gone, timeout=30, what="finalizer geopin.io/restore removed, policy gone")
        finally:
            operator.stop()
            if not policy_gone():  # never leave a policy with a finalizer and no operator behind
                custom.patch_cluster_custom_object(
                    "geopin.io", "v1alpha1", "registrypolicies", POLICY, {"metadata": {"finalizers": None}}
                )
                custom.delete_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", POLICY)
            apps.delete_namespaced_deployment("app", WORKLOAD_NAMESPACE)
            api.close()

    events = [e for e in control_plane.audit_events(audit_start) if (e.get("user") or {}).get("username") == SA_USER]
    forbidden = [
        (e["verb"], (e.get("objectRef") or {}).get("resource"))
        for e in events
        if (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert forbidden == []
    writes = {(e["verb"], (e.get("objectRef") or {}).get("resource"), (e.get("objectRef") or {}).get("subresource"))
              for e in events}  # fmt: skip
    assert ("patch", "deployments", None) in writes
    assert ("patch", "registrypolicies", "status") in writes
    assert ("patch", "registrypolicies", None) in writes  # Kopf's finalizer
    assert ("create", "leases", None) in writes
    assert "forbidden" not in operator.log().lower()


def test_a_missing_verb_fails_with_a_clear_error(
    control_plane: ControlPlane,
    ca: CA,
    tools: Tools,
    rbac_docs: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Take `patch` on deployments away from the chart's ClusterRole: the operator says exactly what is
    forbidden (in its log, with the API server's message) and writes nothing; the role is put back after."""
    role = copy.deepcopy(next(d for d in rbac_docs if d["kind"] == "ClusterRole"))
    for rule in role["rules"]:
        if "deployments" in rule.get("resources", []):
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    tools.kubectl("apply", "-f", "-", stdin=json.dumps(role))
    api: Any = control_plane.api_client()
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    _ensure_namespace(tools, WORKLOAD_NAMESPACE)
    original = f"{REGISTRY}/chart/denied:1"
    apps.create_namespaced_deployment(WORKLOAD_NAMESPACE, deployment("denied", original))
    operator = Operator(control_plane, tmp_path, user=RBAC_RELEASE, env={"HOSTNAME": f"{RBAC_RELEASE}-denied"})
    operator.kubeconfig = _token_kubeconfig(control_plane, tools, tmp_path / "sa.kubeconfig")
    try:
        with RegistrySet(ca) as registries:
            custom.create_cluster_custom_object(
                "geopin.io",
                "v1alpha1",
                "registrypolicies",
                {
                    "apiVersion": "geopin.io/v1alpha1",
                    "kind": "RegistryPolicy",
                    "metadata": {"name": "chart-denied"},
                    "spec": {
                        "registry": REGISTRY,
                        "region": "eastus",
                        "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in ("eastus", "westus")],
                        "probe": {"caBundle": ca.cert_pem.decode()},
                        "replicationCheck": False,
                    },
                },
            )
            operator.start("--leader-election", f"--lease-name={RBAC_RELEASE}")
            expected = 'cannot patch resource "deployments"'
            wait_until(lambda: expected in operator.log(), timeout=60, what="a clear forbidden error in the log")
            line = next(line for line in operator.log().splitlines() if expected in line)
            assert "is forbidden (check geopin's RBAC)" in line
            assert "Deployment chart-rbac/denied" in line
            assert (
                apps.read_namespaced_deployment("denied", WORKLOAD_NAMESPACE).spec.template.spec.containers[0].image
                == original
            )
            operator.stop()
            custom.patch_cluster_custom_object(
                "geopin.io", "v1alpha1", "registrypolicies", "chart-denied", {"metadata": {"finalizers": None}}
            )
            custom.delete_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", "chart-denied")
    finally:
        operator.stop()
        full = next(d for d in rbac_docs if d["kind"] == "ClusterRole")
        tools.kubectl("apply", "-f", "-", stdin=json.dumps(full))
        apps.delete_namespaced_deployment("denied", WORKLOAD_NAMESPACE)
        api.close()
