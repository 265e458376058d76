"""`geopin probe` and `geopin status` as a user runs them: real processes, registries, control plane.

`probe` is run against the three local registry replicas (TLS with the test CA), with centralus
killed for the failure case. `status` reads a RegistryPolicy that a running operator reconciles,
and must fail with one line (no traceback) for a missing policy, a missing kubeconfig and a closed
API server port.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client

from tests.harness import procs
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA
    from tests.harness.registries import Registry, RegistrySet

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
POLICY = "statuscli"
REGISTRY = "statuscli.azurecr.io"
REGIONS = ("eastus", "westus", "centralus")


def geopin(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geopin.cli", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The probe table's rows by region (first column), header excluded."""
    lines = stdout.splitlines()
    assert lines[0].split()[:5] == ["REGION", "ENDPOINT", "OUTCOME", "STATUS", "LATENCY"], stdout
    return {line.split()[0]: line.split() for line in lines[1:]}


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> None:
    assert result.returncode == code, result
    assert result.stdout == "", result
    assert result.stderr.startswith("geopin: "), result
    assert result.stderr.count("\n") == 1, result
    assert "Traceback" not in result.stderr


# -- probe -------------------------------------------------------------------------------------


def probe_argv(registries: RegistrySet, ca: CA, *extra: str) -> list[str]:
    argv = ["probe", REGISTRY, "--ca", str(ca.cert_path)]
    for region in REGIONS:
        argv += ["--region", region, "--endpoint", f"{region}={registries[region].endpoint}"]
    return [*argv, *extra]


def test_probe_all_replicas_ok(registries: RegistrySet, ca: CA) -> None:
    result = geopin(*probe_argv(registries, ca))
    assert result.returncode == 0, result
    rows = table_rows(result.stdout)
    assert list(rows) == list(REGIONS)
    for region, row in rows.items():
        assert row[1] == registries[region].endpoint
        assert row[2] == "ok", result.stdout
        assert row[3] != "-"
        assert row[4].endswith("ms")


def test_probe_a_killed_replica_fails(registries: RegistrySet, ca: CA, fault_registry: Registry) -> None:
    fault_registry.stop()
    result = geopin(*probe_argv(registries, ca))
    assert result.returncode == 1, result
    rows = table_rows(result.stdout)
    assert [rows[r][2] for r in REGIONS] == ["ok", "ok", "connect"], result.stdout
    assert rows["centralus"][3] == "-"

    as_json = geopin(*probe_argv(registries, ca, "-o", "json"))
    assert as_json.returncode == 1, as_json
    document = json.loads(as_json.stdout)
    assert document["ok"] is False
    assert document["registry"] == REGISTRY
    assert {p["region"]: p["outcome"] for p in document["probes"]} == {
        "eastus": "ok",
        "westus": "ok",
        "centralus": "connect",
    }
    assert {p["region"]: p["endpoint"] for p in document["probes"]} == {r: registries[r].endpoint for r in REGIONS}


def test_probe_without_the_ca_is_a_tls_failure(registries: RegistrySet) -> None:
    result = geopin("probe", REGISTRY, "--region", "eastus", "--endpoint", f"eastus={registries['eastus'].endpoint}")
    assert result.returncode == 1, result
    assert table_rows(result.stdout)["eastus"][2] == "tls"


# -- status ------------------------------------------------------------------------------------


def policy_body(registries: RegistrySet, ca: CA) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RegistryPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "registry": REGISTRY,
            "region": "eastus",
            "replicas": [{"region": r, "endpoint": registries[r].endpoint} for r in REGIONS],
            "probe": {"caBundle": ca.cert_pem.decode()},
            "replicationCheck": False,
        },
    }


@pytest.fixture(scope="module")
def reconciled(
    control_plane: ControlPlane, registries: RegistrySet, ca: CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """A running operator and the policy it reconciled; the policy is deleted before the operator stops."""
    install_crd(control_plane)
    with control_plane.api_client() as api:
        custom: Any = client.CustomObjectsApi(api)
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, policy_body(registries, ca))
        operator = Operator(control_plane, tmp_path_factory.mktemp("cli-operator"))
        try:
            operator.start()

            def ready() -> bool:
                status = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY).get("status") or {}
                conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
                return conditions.get("Ready") == "True" and conditions.get("Degraded") == "False"

            wait_until(ready, timeout=60, what=f"policy {POLICY} Ready and not Degraded")
            yield operator
        finally:
            try:
                custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)

                def gone() -> bool:
                    try:
                        custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
                    except client.ApiException as e:
                        return bool(e.status == 404)
                    return False

                wait_until(gone, timeout=30, what=f"policy {POLICY} deleted (finalizer released)")
            finally:
                operator.stop()


def test_status_of_a_ready_policy(reconciled: Operator, control_plane: ControlPlane, registries: RegistrySet) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    result = geopin("status", POLICY, "--kubeconfig", kubeconfig)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "REGISTRY", "REGION", "ACTIVE"]
    assert lines[1].split()[:5] == [POLICY, REGISTRY, "eastus", "eastus", "3/3"], result.stdout
    assert f"Active:          eastus ({registries['eastus'].endpoint})" in lines
    replica_rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and ":" in line}
    for region in REGIONS:
        assert replica_rows[region][1:3] == [registries[region].endpoint, "Healthy"], result.stdout

    as_yaml = geopin("status", POLICY, "--kubeconfig", kubeconfig, "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml
    document = yaml.safe_load(as_yaml.stdout)
    (policy,) = document["policies"]
    assert document["ok"] is True
    assert (policy["name"], policy["activeRegion"]) == (POLICY, "eastus")
    assert policy["conditions"]["Ready"]["status"] == "True"
    assert policy["conditions"]["Degraded"]["status"] == "False"
    assert policy["conditions"]["FailedOver"]["status"] == "False"

    # All policies: ours is listed (other modules' policies may be there too and decide the exit code).
    listing = geopin("status", "--kubeconfig", kubeconfig, "-o", "json")
    assert listing.returncode in (0, 1), listing
    assert POLICY in [p["name"] for p in json.loads(listing.stdout)["policies"]]


def test_status_of_a_missing_policy(reconciled: Operator, control_plane: ControlPlane) -> None:
    result = geopin("status", "nonexistent", "--kubeconfig", str(control_plane.kubeconfig))
    assert_one_line_error(result)
    assert "not found" in result.stderr


def test_status_with_a_missing_kubeconfig(tmp_path: Path) -> None:
    result = geopin("status", "--kubeconfig", str(tmp_path / "nonexistent"))
    assert_one_line_error(result)
    assert "kubeconfig" in result.stderr


def test_status_with_a_closed_port(control_plane: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{procs.free_port()}"
    kubeconfig = tmp_path / "closed.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = geopin("status", "--kubeconfig", str(kubeconfig), "--request-timeout", "2", timeout=30)
    assert time.monotonic() - started < 10
    assert_one_line_error(result)
    assert "cannot reach the cluster" in result.stderr
