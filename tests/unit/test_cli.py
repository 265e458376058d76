"""`geopin plan` and `geopin version`: output, summary and warnings, exit codes (api.md)."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from geopin import __version__
from geopin.cli.main import main

SHA = "sha256:" + "ab" * 32
POLICY = """\
apiVersion: geopin.io/v1alpha1
kind: RegistryPolicy
metadata:
  name: contoso
spec:
  registry: contoso.azurecr.io
  region: {region}
  replicas:
    - region: eastus
    - region: westus
"""
NAMESPACE: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "contoso.azurecr.io/shop/migrate:3"}],
                "containers": [
                    {
                        "name": "web",
                        "image": f"contoso.azurecr.io/shop/web:1.2@{SHA}",
                        "ports": [{"containerPort": 80}],
                    },
                    {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.30"},
                ],
            },
        },
    },
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
}
CONFIGMAP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "cfg", "namespace": "shop"},
    "data": {"image": "contoso.azurecr.io/shop/web:1.2"},
}
DOCUMENTS = [NAMESPACE, DEPLOYMENT, SERVICE, CONFIGMAP]


def manifests(*docs: Any) -> str:
    return yaml.safe_dump_all(docs or DOCUMENTS, sort_keys=False, explicit_start=True)


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def documents(self) -> list[Any]:
        return list(yaml.safe_load_all(self.stdout))

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def geopin(*argv: str, stdin: str = "") -> Run:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def policy_file(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(region="eastus"))
    return str(path)


@pytest.fixture
def auto_policy_file(tmp_path: Path) -> str:
    path = tmp_path / "auto.yaml"
    path.write_text(POLICY.format(region="auto"))
    return str(path)


@pytest.fixture
def manifest_file(tmp_path: Path) -> str:
    path = tmp_path / "app.yaml"
    path.write_text(manifests())
    return str(path)


def expected_deployment(region: str) -> dict[str, Any]:
    """DEPLOYMENT pinned to ``region``: only the hosts and geopin's two annotations differ."""
    doc = copy.deepcopy(DEPLOYMENT)
    spec = doc["spec"]["template"]["spec"]
    spec["initContainers"][0]["image"] = f"contoso.{region}.geo.azurecr.io/shop/migrate:3"
    spec["containers"][0]["image"] = f"contoso.{region}.geo.azurecr.io/shop/web:1.2@{SHA}"
    doc["metadata"]["annotations"] = {
        "geopin.io/original-images": json.dumps(
            {
                "containers/web": f"contoso.azurecr.io/shop/web:1.2@{SHA}",
                "initContainers/migrate": "contoso.azurecr.io/shop/migrate:3",
            },
            sort_keys=True,
            separators=(",", ":"),
        ),
        "geopin.io/pinned-region": region,
    }
    return doc


def assert_one_line_error(run: Run, code: int) -> str:
    assert run.code == code
    assert run.stdout == ""
    assert len(run.lines) == 1, run.stderr
    assert run.lines[0].startswith("geopin: ")
    assert "Traceback" not in run.stderr
    return run.lines[0]


# --------------------------------------------------------------------------- plan: the happy path


def test_plan_rewrites_a_multi_document_file(policy_file: str, manifest_file: str) -> None:
    run = geopin("plan", "--policy", policy_file, manifest_file)
    assert run.code == 0, run.stderr
    namespace, deployment, service, configmap = run.documents
    assert deployment == expected_deployment("eastus")
    # Documents that are not workloads pass through unchanged, even when they mention the registry.
    assert (namespace, service, configmap) == (NAMESPACE, SERVICE, CONFIGMAP)
    assert run.lines == [
        "rewrite: Deployment shop/web: initContainers/migrate: contoso.azurecr.io/shop/migrate:3 -> "
        "contoso.eastus.geo.azurecr.io/shop/migrate:3",
        f"rewrite: Deployment shop/web: containers/web: contoso.azurecr.io/shop/web:1.2@{SHA} -> "
        f"contoso.eastus.geo.azurecr.io/shop/web:1.2@{SHA}",
        "geopin plan: 2 images rewritten in 1 workloads to eastus (contoso.eastus.geo.azurecr.io); 0 warnings",
    ]


def test_plan_output_is_stable_when_planned_again(policy_file: str, manifest_file: str, tmp_path: Path) -> None:
    first = geopin("plan", "--policy", policy_file, manifest_file)
    again_file = tmp_path / "planned.yaml"
    again_file.write_text(first.stdout)
    second = geopin("plan", "--policy", policy_file, str(again_file))
    assert second.code == 0
    assert second.documents == first.documents
    assert second.lines[-1].startswith("geopin plan: 0 images rewritten in 1 workloads")


@pytest.mark.parametrize("files", [["-"], []])
def test_plan_reads_stdin(policy_file: str, files: list[str]) -> None:
    run = geopin("plan", "--policy", policy_file, *files, stdin=manifests())
    assert run.code == 0, run.stderr
    assert run.documents[1] == expected_deployment("eastus")
    assert run.lines[-1].startswith("geopin plan: 2 images rewritten in 1 workloads")


def test_plan_reads_several_files_in_order(policy_file: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(manifests(SERVICE))
    b.write_text(manifests(DEPLOYMENT, CONFIGMAP))
    run = geopin("plan", "--policy", policy_file, str(a), str(b))
    assert run.code == 0
    assert run.documents == [SERVICE, expected_deployment("eastus"), CONFIGMAP]


def test_active_region_plans_a_failover(policy_file: str, manifest_file: str) -> None:
    run = geopin("plan", "--policy", policy_file, "--active-region", "westus", manifest_file)
    assert run.code == 0, run.stderr
    assert run.documents[1] == expected_deployment("westus")
    assert run.lines[-1].endswith("to westus (contoso.westus.geo.azurecr.io); 0 warnings")


def test_active_region_global_keeps_the_global_endpoint(policy_file: str, manifest_file: str) -> None:
    run = geopin("plan", "--policy", policy_file, "--active-region", "global", manifest_file)
    assert run.code == 0, run.stderr
    deployment = run.documents[1]
    assert deployment["spec"] == DEPLOYMENT["spec"]
    assert not any(line.startswith("rewrite:") for line in run.lines)
    assert run.lines[-1] == "geopin plan: 0 images rewritten in 1 workloads to global (contoso.azurecr.io); 0 warnings"


def test_unknown_active_region_is_a_usage_error(policy_file: str, manifest_file: str) -> None:
    run = geopin("plan", "--policy", policy_file, "--active-region", "nowhere", manifest_file)
    line = assert_one_line_error(run, 2)
    assert "'nowhere'" in line
    assert "eastus, westus, global" in line


def test_auto_region_needs_region(auto_policy_file: str, manifest_file: str) -> None:
    line = assert_one_line_error(geopin("plan", "--policy", auto_policy_file, manifest_file), 2)
    assert "--region" in line


def test_auto_region_with_region(auto_policy_file: str, manifest_file: str) -> None:
    run = geopin("plan", "--policy", auto_policy_file, "--region", "westus", manifest_file)
    assert run.code == 0, run.stderr
    assert run.documents[1] == expected_deployment("westus")


def test_namespace_selector_with_an_unknown_namespace_warns(tmp_path: Path, manifest_file: str) -> None:
    policy = tmp_path / "selective.yaml"
    policy.write_text(POLICY.format(region="eastus") + "  namespaceSelector: {matchLabels: {pin: 'yes'}}\n")
    other = copy.deepcopy(DEPLOYMENT)
    other["metadata"]["namespace"] = "elsewhere"
    run = geopin("plan", "--policy", str(policy), stdin=manifests(NAMESPACE, DEPLOYMENT, other))
    assert run.code == 1
    assert run.documents == [NAMESPACE, DEPLOYMENT, other]  # shop's labels do not match; elsewhere is unknown
    assert [line for line in run.lines if line.startswith("warning:")] == [
        "warning: Deployment elsewhere/web: namespace 'elsewhere' not in the input; its labels are unknown"
    ]


# --------------------------------------------------------------------------- plan: problems (exit 1)


def test_missing_file_is_one_line(policy_file: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    line = assert_one_line_error(geopin("plan", "--policy", policy_file, str(missing)), 1)
    assert line == f"geopin: cannot read {missing}: No such file or directory"


def test_a_directory_as_the_policy_is_one_line(manifest_file: str, tmp_path: Path) -> None:
    line = assert_one_line_error(geopin("plan", "--policy", str(tmp_path), manifest_file), 1)
    assert line.startswith(f"geopin: cannot read {tmp_path}: ")


def test_missing_policy_file_is_one_line(tmp_path: Path, manifest_file: str) -> None:
    line = assert_one_line_error(geopin("plan", "--policy", str(tmp_path / "nope.yaml"), manifest_file), 1)
    assert "cannot read" in line


def test_non_utf8_file_is_one_line(policy_file: str, tmp_path: Path) -> None:
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"kind: ConfigMap\ndata: {a: caf\xe9}\n")
    assert_one_line_error(geopin("plan", "--policy", policy_file, str(binary)), 1)


def test_invalid_yaml_is_one_line(policy_file: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Deployment\nmetadata: {name: [web\n")
    line = assert_one_line_error(geopin("plan", "--policy", policy_file, str(broken)), 1)
    assert line.startswith(f"geopin: {broken}: not valid YAML: ")


def test_invalid_yaml_on_stdin(policy_file: str) -> None:
    line = assert_one_line_error(geopin("plan", "--policy", policy_file, stdin="a: b: c\n"), 1)
    assert line.startswith("geopin: -: not valid YAML: ")


@pytest.mark.parametrize(("content", "found"), [("", 0), (manifests(), 0), ("POLICY\n---\nPOLICY\n", 2)])
def test_policy_file_needs_exactly_one_registry_policy(tmp_path: Path, content: str, found: int) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(content.replace("POLICY", POLICY.format(region="eastus")))
    line = assert_one_line_error(geopin("plan", "--policy", str(path), stdin=manifests()), 1)
    assert line == f"geopin: {path}: expected exactly one RegistryPolicy, found {found}"


def test_invalid_policy_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "kind: RegistryPolicy\nmetadata: {name: local}\n"
        "spec: {registry: 'registry.example.com:5000', region: eastus, replicas: [{region: eastus}]}\n"
    )
    line = assert_one_line_error(geopin("plan", "--policy", str(path), stdin=manifests()), 1)
    assert line.startswith(f"geopin: {path}: invalid RegistryPolicy: spec.replicas[0].endpoint: required")


def test_invalid_policy_lists_every_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("kind: RegistryPolicy\nspec: {registry: 'https://x', region: East-US, mode: Sometimes}\n")
    line = assert_one_line_error(geopin("plan", "--policy", str(path), stdin=manifests()), 1)
    for field in ("spec.registry", "spec.region", "spec.replicas", "spec.mode"):
        assert field in line


def test_policy_spec_not_a_mapping_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("kind: RegistryPolicy\nmetadata: {name: p}\nspec: [contoso.azurecr.io]\n")
    line = assert_one_line_error(geopin("plan", "--policy", str(path), stdin=manifests()), 1)
    assert "spec" in line


def test_deployment_with_null_metadata_is_not_a_traceback(policy_file: str) -> None:
    run = geopin("plan", "--policy", policy_file, stdin="kind: Deployment\nmetadata:\nspec: {}\n")
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert "warning: Deployment: metadata: must be an object; left as it is" in run.stderr


def test_invalid_image_reference_warns_and_leaves_the_document(policy_file: str) -> None:
    bad = copy.deepcopy(DEPLOYMENT)
    bad["metadata"] = {"name": "bad"}
    del bad["spec"]["template"]["spec"]["initContainers"]
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = "contoso.azurecr.io/Shop/Web:1"
    run = geopin("plan", "--policy", policy_file, stdin=manifests(bad, SERVICE))
    assert run.code == 1
    assert run.documents == [bad, SERVICE]
    assert run.lines == [
        "warning: Deployment default/bad: containers/web: 'contoso.azurecr.io/Shop/Web:1' left untouched: "
        "repository name must be lower-case",
        "geopin plan: 0 images rewritten in 1 workloads to eastus (contoso.eastus.geo.azurecr.io); 1 warnings",
    ]


def test_invalid_image_next_to_a_valid_one(policy_file: str) -> None:
    mixed = copy.deepcopy(DEPLOYMENT)
    mixed["spec"]["template"]["spec"]["containers"][1]["image"] = "contoso.azurecr.io/x@sha256:nope"
    run = geopin("plan", "--policy", policy_file, stdin=manifests(mixed))
    assert run.code == 1
    containers = run.documents[0]["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == f"contoso.eastus.geo.azurecr.io/shop/web:1.2@{SHA}"
    assert containers[1]["image"] == "contoso.azurecr.io/x@sha256:nope"
    assert sum(line.startswith("warning: ") for line in run.lines) == 1
    assert sum(line.startswith("rewrite: ") for line in run.lines) == 2


# --------------------------------------------------------------------------- usage and version


@pytest.mark.parametrize(
    "argv",
    [["bogus"], [], ["plan"], ["plan", "--policy"], ["version", "--nope"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv, stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "geopin: error: " in err
    assert "Traceback" not in err


def test_version() -> None:
    run = geopin("version")
    assert run.code == 0
    assert run.stdout == f"geopin {__version__}\n"
    assert __version__.count(".") == 2
    assert run.stderr == ""


# --------------------------------------------------------------------------- the installed entry point


def test_console_script_plans(policy_file: str, manifest_file: str) -> None:
    script = Path(sys.executable).with_name("geopin")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    done = subprocess.run(
        [str(script), "plan", "--policy", policy_file, manifest_file],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(yaml.safe_load_all(done.stdout))[1] == expected_deployment("eastus")
    assert done.stderr.splitlines()[-1].startswith("geopin plan: 2 images rewritten in 1 workloads")

    usage = subprocess.run([str(script), "bogus"], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2
    assert "invalid choice" in usage.stderr


def test_plan_reads_every_manifest_of_a_directory(tmp_path: Path) -> None:
    """`geopin plan --policy P DIR`: every *.yaml / *.yml below DIR, in sorted order; other files ignored."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "kind: RegistryPolicy\nmetadata: {name: p}\n"
        "spec: {registry: contoso.azurecr.io, replicas: [{region: eastus}]}\n"
    )
    manifests = tmp_path / "manifests" / "nested"
    manifests.mkdir(parents=True)
    for name in ("b.yaml", "a.yml"):
        (manifests / name).write_text(
            "kind: Deployment\n"
            f"metadata: {{name: {name.split('.')[0]}, namespace: shop}}\n"
            "spec: {template: {spec: {containers: [{name: c, image: contoso.azurecr.io/x:1}]}}}\n"
        )
    (manifests / "notes.txt").write_text("not yaml: [")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["plan", "--policy", str(policy), "--region", "eastus", str(tmp_path / "manifests")], io.StringIO(), out, err
    )
    assert code == 0, err.getvalue()
    documents = list(yaml.safe_load_all(out.getvalue()))
    assert [d["metadata"]["name"] for d in documents] == ["a", "b"]
    assert all(
        d["spec"]["template"]["spec"]["containers"][0]["image"].startswith("contoso.eastus.geo") for d in documents
    )
