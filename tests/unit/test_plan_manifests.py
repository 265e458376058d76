"""`geopin plan` on real-world manifests: every value it does not rewrite comes out as kubectl reads it in."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from geopin.cli.main import main

POLICY = """\
apiVersion: geopin.io/v1alpha1
kind: RegistryPolicy
metadata: {name: contoso}
spec:
  registry: contoso.azurecr.io
  region: eastus
  replicas: [{region: eastus}, {region: westus}]
"""


def plan(tmp_path: Path, manifests: str, *extra: str) -> tuple[int, str, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    out, err = io.StringIO(), io.StringIO()
    code = main(["plan", "--policy", str(policy), *extra, "-"], io.StringIO(manifests), out, err)
    return code, out.getvalue(), err.getvalue()


# Values YAML 1.1 reads differently from kubectl (sigs.k8s.io/yaml, go-yaml v2): each line must come out as it went in.
TRICKY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  annotations:
    backup-window: 12:30
    released: 2024-01-01t10:00:00.5+01:00
    note: "yes"
spec:
  replicas: 0x2
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: contoso.azurecr.io/shop/web:1
          args: [--at, 12:30, --retries, 0o7]
          env:
            - name: TZ_OFFSET
              value: 5:30
      volumes:
        - name: cfg
          configMap: {name: cfg, defaultMode: 0o644}
"""
KEPT_LINES = [
    "    backup-window: 12:30",
    "    released: 2024-01-01t10:00:00.5+01:00",
    '    note: "yes"',
    "  replicas: 0x2",
    "          args: [--at, 12:30, --retries, 0o7]",
    "              value: 5:30",
    "          configMap: {name: cfg, defaultMode: 0o644}",
]


def test_plan_keeps_every_value_it_does_not_rewrite(tmp_path: Path) -> None:
    code, out, err = plan(tmp_path, TRICKY)
    assert code == 0, err
    lines = out.splitlines()
    for line in KEPT_LINES:
        assert line in lines, f"{line!r} not in the output:\n{out}"
    assert "          image: contoso.eastus.geo.azurecr.io/shop/web:1" in lines
    # YAML 1.1's sexagesimal reading of 12:30 and 5:30
    assert "750" not in out
    assert "330" not in out


@pytest.mark.parametrize("comment", ["# rendered by helm\n", ""])
def test_plan_keeps_comments_and_key_order(tmp_path: Path, comment: str) -> None:
    manifest = comment + TRICKY
    code, out, _ = plan(tmp_path, manifest)
    assert code == 0
    if comment:
        assert comment.strip() in out.splitlines()
    keys = [line.split(":")[0] for line in out.splitlines() if line and not line.startswith((" ", "-", "#"))]
    assert keys == ["apiVersion", "kind", "metadata", "spec"]


# --------------------------------------------------------------------------- which documents are workloads

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop{annotations}}}
spec:
  template:
    spec:
      containers:
{containers}
"""


def deployment(name: str = "web", containers: str = "", annotations: str = "") -> str:
    containers = containers or "        - {name: web, image: contoso.azurecr.io/shop/web:1}"
    return DEPLOYMENT.format(name=name, containers=containers, annotations=annotations)


def test_a_kubectl_get_list_has_its_items_rewritten(tmp_path: Path) -> None:
    """`kubectl get deploy -o yaml` prints a v1 List; a typed DeploymentList is read the same way."""
    listing = """\
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: shop}
    spec:
      template:
        spec:
          containers:
            - {name: web, image: contoso.azurecr.io/shop/web:1}
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: DeploymentList
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: api, namespace: shop}
    spec:
      template:
        spec:
          containers:
            - {name: api, image: contoso.azurecr.io/shop/api:2}
"""
    code, out, err = plan(tmp_path, listing)
    assert code == 0, err
    assert "            - {name: web, image: contoso.eastus.geo.azurecr.io/shop/web:1}" in out.splitlines()
    assert "            - {name: api, image: contoso.eastus.geo.azurecr.io/shop/api:2}" in out.splitlines()
    assert "geopin plan: 2 images rewritten in 2 workloads" in err


def test_plan_leaves_a_controller_owned_replicaset_as_the_operator_does(tmp_path: Path) -> None:
    replicasets = """\
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d8f
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u-1, controller: true}]
spec:
  template:
    spec:
      containers: [{name: web, image: contoso.azurecr.io/shop/web:1}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: standalone, namespace: shop}
spec:
  template:
    spec:
      containers: [{name: web, image: contoso.azurecr.io/shop/web:1}]
"""
    code, out, err = plan(tmp_path, replicasets)
    assert code == 0, err
    owned, standalone = out.split("---\n")[1:]
    assert "containers: [{name: web, image: contoso.azurecr.io/shop/web:1}]" in owned
    assert "geopin.io" not in owned
    assert "containers: [{name: web, image: contoso.eastus.geo.azurecr.io/shop/web:1}]" in standalone
    assert "1 images rewritten in 1 workloads" in err


def test_a_deployment_of_another_api_group_is_not_a_workload(tmp_path: Path) -> None:
    other = deployment().replace("apiVersion: apps/v1", "apiVersion: example.com/v1")
    code, out, err = plan(tmp_path, other)
    assert code == 0, err
    assert "contoso.azurecr.io/shop/web:1" in out
    assert "0 images rewritten in 0 workloads" in err


# --------------------------------------------------------------------------- bad input: one line, exit 1

BAD_INPUT = [
    (
        deployment(annotations=", annotations: {geopin.io/skip: true}"),
        "metadata.annotations.geopin.io/skip: must be a string",
    ),
    (deployment(containers="        - {image: contoso.azurecr.io/shop/web:1}"), "containers[0].name: required"),
    (
        deployment(containers="        - {name: 7, image: contoso.azurecr.io/shop/web:1}"),
        "containers[0].name: must be a string",
    ),
    (
        deployment(containers="        - {name: [a], image: contoso.azurecr.io/shop/web:1}"),
        "containers[0].name: must be a string",
    ),
    (deployment(annotations=", annotations: [a, b]"), "metadata.annotations: must be an object"),
    (deployment(annotations=", labels: [a, b]"), "metadata.labels: must be an object"),
    (
        deployment(annotations=", annotations: {geopin.io/original-images: 5}"),
        "metadata.annotations.geopin.io/original-images: must be a string",
    ),
    (
        deployment(annotations=", annotations: {geopin.io/original-images: {a: b}}"),
        "metadata.annotations.geopin.io/original-images: must be a string",
    ),
    (deployment(containers="        - just-a-string"), "containers[0]: must be an object"),
    (deployment(containers="        - {name: web, image: 5}"), "containers[0].image: must be a string"),
    (
        DEPLOYMENT.format(name="web", annotations="", containers="").replace("containers:\n", "containers: 5\n"),
        "spec.template.spec.containers: must be a list",
    ),
]


@pytest.mark.parametrize(("manifest", "field"), BAD_INPUT, ids=[b[1] for b in BAD_INPUT])
def test_bad_input_is_a_one_line_warning_naming_document_and_field(tmp_path: Path, manifest: str, field: str) -> None:
    code, out, err = plan(tmp_path, manifest)
    assert code == 1
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("warning: Deployment shop/web: ")
    assert field in warnings[0]
    assert "contoso.eastus.geo" not in out  # left as it is


def test_duplicate_container_names_leave_the_workload_untouched(tmp_path: Path) -> None:
    manifest = deployment(
        containers="        - {name: web, image: contoso.azurecr.io/shop/web:1}\n"
        "        - {name: web, image: contoso.azurecr.io/shop/api:2}"
    )
    code, out, err = plan(tmp_path, manifest)
    assert code == 1
    assert "warning: Deployment shop/web: spec.template.spec.containers[1].name: 'web' is used twice" in err
    assert "- {name: web, image: contoso.azurecr.io/shop/web:1}" in out
    assert "- {name: web, image: contoso.azurecr.io/shop/api:2}" in out
    assert "geopin.io/original-images" not in out
