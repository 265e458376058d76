"""The Helm chart as the tests render it: the real helm (hack/tools/build.sh) and the value sets."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tests.harness.controlplane import ControlPlane

__all__ = ["ALL_FEATURES", "CHART", "ROOT", "ChartServiceAccount", "render", "template_args", "tools_bin"]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "geopin"
# Every optional feature on: what the static and the server-side checks both render.
ALL_FEATURES = (
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
    "samplePolicy.enabled=true",
    "rbac.secrets.enabled=true",
    "azureWorkloadIdentity.enabled=true",
    "azureWorkloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
    "service.webhook.enabled=true",
    "service.webhook.certSecret=geopin-webhook-tls",
    "networkPolicy.enabled=true",
    "networkPolicy.metrics.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    "priorityClass.create=true",
    "metrics.secure=true",
    "metrics.certSecret=geopin-metrics-tls",
)


@functools.cache
def tools_bin() -> Path:
    """The directory holding helm and kubeconform (built from the Go module proxy once, then cached)."""
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools" / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def template_args(release: str, namespace: str, sets: tuple[str, ...]) -> list[str]:
    """``helm template`` arguments for the chart with ``--set`` values."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    return args


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def render(release: str, namespace: str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The chart rendered by the real helm (``helm template``), one dict per document."""
    result = subprocess.run(
        [str(tools_bin() / "helm"), *template_args(release, namespace, sets)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


class ChartServiceAccount:
    """The chart's ServiceAccount and RBAC (rendered with ``sets``) applied to a real API server, and a
    kubeconfig authenticated by a real token of that ServiceAccount: geopin run as the chart runs it.

        with ChartServiceAccount(cp, "geopin-redirect", "geopin-system", workdir) as sa:
            operator = Operator(cp, workdir, user=sa.user)
            operator.kubeconfig = sa.kubeconfig
    """

    def __init__(
        self, cp: ControlPlane, release: str, namespace: str, workdir: Path, sets: tuple[str, ...] = ()
    ) -> None:
        self.cp = cp
        self.release = release
        self.namespace = namespace
        self.docs = [d for d in render(release, namespace, sets) if d["kind"] in RBAC_KINDS]
        self.kubeconfig = workdir / f"{release}.kubeconfig"
        service_account = next(d for d in self.docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        self.user = f"system:serviceaccount:{namespace}:{service_account}"
        self._service_account = service_account

    def __enter__(self) -> ChartServiceAccount:
        from kubernetes import client

        with self.cp.api_client() as api:
            core: Any = client.CoreV1Api(api)
            for doc in self.docs:
                _create_or_replace(api, doc)
            request = {"spec": {"expirationSeconds": 3600}}
            token = core.create_namespaced_service_account_token(self._service_account, self.namespace, request)
        config = yaml.safe_load(Path(self.cp.kubeconfig).read_text())
        config["users"] = [{"name": self.release, "user": {"token": token.status.token}}]
        for context in config["contexts"]:
            context["context"]["user"] = self.release
        self.kubeconfig.write_text(yaml.safe_dump(config))
        return self

    def __exit__(self, *_: object) -> None:
        from kubernetes import client

        with self.cp.api_client() as api:
            for doc in reversed(self.docs):
                try:
                    _call(api, doc, "delete")
                except client.ApiException as e:
                    if e.status != 404:
                        raise


def _call(api: Any, doc: dict[str, Any], verb: str) -> Any:
    from kubernetes import client

    kind, meta = doc["kind"], doc["metadata"]
    target: Any
    if kind == "ServiceAccount":
        target, plural = client.CoreV1Api(api), "service_account"
    else:
        target, plural = client.RbacAuthorizationV1Api(api), {
            "ClusterRole": "cluster_role", "ClusterRoleBinding": "cluster_role_binding",
            "Role": "role", "RoleBinding": "role_binding",
        }[kind]  # fmt: skip
    namespaced = kind in ("ServiceAccount", "Role", "RoleBinding")
    scope = "namespaced_" if namespaced else ""
    where = (meta["namespace"],) if namespaced else ()
    if verb == "create":
        return getattr(target, f"create_{scope}{plural}")(*where, doc)
    if verb == "replace":
        return getattr(target, f"replace_{scope}{plural}")(meta["name"], *where, doc)
    return getattr(target, f"delete_{scope}{plural}")(meta["name"], *where)


def _create_or_replace(api: Any, doc: dict[str, Any]) -> None:
    from kubernetes import client

    try:
        _call(api, doc, "create")
    except client.ApiException as e:
        if e.status != 409:
            raise
        _call(api, doc, "replace")
