"""`/metrics` over HTTPS, authorized by the real API server (the chart's `metrics.secure`).

geopin runs as the chart's ServiceAccount (a real token) with nothing but the chart's RBAC for
`metrics.secure=true`, and with the chart's metrics flags. A scraper's ServiceAccount bound to the
chart's `<release>-metrics-reader` ClusterRole gets 200; one without the binding gets 403; no token or
a made-up one gets 401. The audit log shows the reviews geopin asked for: one TokenReview per token and
one SubjectAccessReview per user, however often they scrape (the decisions are cached).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from kubernetes import client

from tests.harness.chart import template_args, tools_bin
from tests.harness.controlplane import find_binaries
from tests.harness.geopin_process import Operator, install_crd

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE = "geopin-secure", "geopin-secure-metrics"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
SCRAPES = 5


def render(*sets: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(tools_bin() / "helm"), *template_args(RELEASE, NAMESPACE, sets)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def token(core: Any, name: str) -> str:
    request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
    return str(core.create_namespaced_service_account_token(name, NAMESPACE, request).status.token)


class Env:
    def __init__(self, control_plane: ControlPlane, operator: Operator, tokens: dict[str, str], ca: CA) -> None:
        self.cp = control_plane
        self.operator = operator
        self.tokens = tokens
        self.http = httpx.Client(verify=ca.ssl_context(), timeout=10)

    def scrape(self, authorization: str | None) -> httpx.Response:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return self.http.get(f"https://127.0.0.1:{self.operator.metrics_port}/metrics", headers=headers)


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    install_crd(control_plane)
    workdir = tmp_path_factory.mktemp("secure-metrics")
    docs = render("metrics.secure=true", "metrics.certSecret=geopin-metrics-tls")
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    assert sorted(d["metadata"]["name"] for d in rbac if d["kind"] == "ClusterRole") == [
        RELEASE,
        f"{RELEASE}-metrics-reader",
    ]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    chart_flags = [a for a in args if a.startswith(("--metrics-secure", "--metrics-cert-dir"))]
    assert chart_flags == ["--metrics-secure", "--metrics-cert-dir=/etc/geopin/metrics"]

    api: Any = control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    stream = "\n---\n".join(json.dumps(d) for d in rbac)

    def kubectl_apply(verb: str) -> None:
        subprocess.run(
            [str(find_binaries() / "kubectl"), "--kubeconfig", str(control_plane.kubeconfig), verb, "-f", "-"],
            input=stream,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )

    kubectl_apply("apply")
    rbac_api: Any = client.RbacAuthorizationV1Api(api)
    for name in ("scraper", "stranger"):
        core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": name}})
    rbac_api.create_cluster_role_binding(
        {
            "metadata": {"name": f"{RELEASE}-scraper"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{RELEASE}-metrics-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": NAMESPACE}],
        }
    )
    # The chart's Secret would hold a cert-manager certificate for the Service; here one from the run's CA.
    cert_dir = workdir / "metrics-tls"
    cert_dir.mkdir()
    serving = ca.issue_server("geopin-metrics", ("127.0.0.1", f"{RELEASE}.{NAMESPACE}.svc"))
    (cert_dir / "tls.crt").write_bytes(serving.cert_pem)
    (cert_dir / "tls.key").write_bytes(serving.key_pem)
    (cert_dir / "ca.crt").write_bytes(ca.cert_pem)

    operator = Operator(control_plane, workdir, user=RELEASE)
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    config["users"] = [{"name": RELEASE, "user": {"token": token(core, RELEASE)}}]
    for context in config["contexts"]:
        context["context"]["user"] = RELEASE
    operator.kubeconfig = workdir / "sa.kubeconfig"
    operator.kubeconfig.write_text(yaml.safe_dump(config))
    tokens = {name: token(core, name) for name in ("scraper", "stranger")}
    audit_start = control_plane.audit_line_count()
    operator.start("--metrics-secure", f"--metrics-cert-dir={cert_dir}")
    env = Env(control_plane, operator, tokens, ca)
    env.audit_start = audit_start  # type: ignore[attr-defined]
    try:
        yield env
    finally:
        env.http.close()
        operator.stop()
        rbac_api.delete_cluster_role_binding(f"{RELEASE}-scraper")
        kubectl_apply("delete")
        core.delete_namespace(NAMESPACE)
        api.close()


def test_no_token_is_401(env: Env) -> None:
    response = env.scrape(None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "geopin_" not in response.text
    assert env.scrape("Basic c2NyYXBlcjpzZWNyZXQ=").status_code == 401


def test_a_token_the_api_server_does_not_know_is_401(env: Env) -> None:
    response = env.scrape("Bearer not-a-real-token")
    assert response.status_code == 401
    assert "geopin_" not in response.text


def test_a_service_account_without_the_reader_role_is_403(env: Env) -> None:
    response = env.scrape(f"Bearer {env.tokens['stranger']}")
    assert response.status_code == 403
    assert response.text.strip() == f"system:serviceaccount:{NAMESPACE}:stranger may not get /metrics"


def test_a_service_account_bound_to_the_reader_role_gets_the_metrics(env: Env) -> None:
    for _ in range(SCRAPES):
        response = env.scrape(f"Bearer {env.tokens['scraper']}")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "# TYPE geopin_endpoint_switches_total counter" in response.text
        assert "# TYPE geopin_replica_healthy gauge" in response.text
    # A second round of every caller: answered from the cache.
    assert env.scrape(f"Bearer {env.tokens['stranger']}").status_code == 403
    assert env.scrape("Bearer not-a-real-token").status_code == 401


def test_plain_http_is_not_served(env: Env) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{env.operator.metrics_port}/metrics", timeout=5)


def test_each_token_and_user_was_reviewed_once_with_only_the_charts_rbac(env: Env) -> None:
    """Runs last: every caller above scraped at least twice; geopin asked the API server once each."""
    since: int = env.audit_start  # type: ignore[attr-defined]
    events = [e for e in env.cp.audit_events(since) if (e.get("user") or {}).get("username") == SA_USER]
    reviews = [
        (e["objectRef"]["resource"], e["responseStatus"]["code"])
        for e in events
        if e["verb"] == "create" and e["objectRef"]["resource"] in {"tokenreviews", "subjectaccessreviews"}
    ]
    # not-a-real-token, stranger, scraper: one TokenReview each; stranger and scraper: one SubjectAccessReview each.
    assert sorted(reviews) == sorted([("tokenreviews", 201)] * 3 + [("subjectaccessreviews", 201)] * 2), reviews
    assert "forbidden" not in env.operator.log().lower()
