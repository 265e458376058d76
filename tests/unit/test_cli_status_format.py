"""`geopin probe` and `geopin status` offline: formatting, exit codes, flag parsing, usage errors."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from geopin.cli import probe as cli_probe
from geopin.cli import status as cli_status
from geopin.cli.errors import CliError
from geopin.cli.main import main
from geopin.cli.output import render
from geopin.io.probes import Outcome, ProbeResult, RegistryClient

NOW = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-28T03:00:00Z",
    }


POLICY: dict[str, Any] = {
    "apiVersion": "geopin.io/v1alpha1",
    "kind": "RegistryPolicy",
    "metadata": {"name": "contoso", "generation": 3},
    "spec": {"registry": "contoso.azurecr.io", "region": "eastus", "mode": "Patch"},
    "status": {
        "observedGeneration": 3,
        "clusterRegion": "eastus",
        "activeRegion": "westus",
        "activeEndpoint": "contoso.westus.geo.azurecr.io",
        "healthySummary": "1/2",
        "replicas": [
            {
                "region": "eastus",
                "endpoint": "contoso.eastus.geo.azurecr.io",
                "state": "Unhealthy",
                "consecutiveFailures": 4,
                "lastProbeTime": "2026-11-28T03:10:00Z",
                "lastTransitionTime": "2026-11-28T03:09:40Z",
                "latencyMilliseconds": 0,
                "message": "connect timeout after 3s",
            },
            {
                "region": "westus",
                "endpoint": "contoso.westus.geo.azurecr.io",
                "state": "Healthy",
                "consecutiveFailures": 0,
                "lastTransitionTime": "2026-11-27T03:15:00Z",
                "latencyMilliseconds": 12,
                "message": "",
            },
        ],
        "workloads": {"total": 46, "pinned": 42, "awaitingReplication": 1, "skipped": 3, "invalid": 0},
        "lastSwitch": {"from": "eastus", "to": "westus", "reason": "ReplicaUnhealthy", "time": "2026-11-28T03:09:40Z"},
        "conditions": [
            condition("Ready", "True", "Reconciled", "42 workloads point to westus"),
            condition("Degraded", "True", "ReplicaUnavailable", "not usable: eastus"),
            condition("FailedOver", "True", "FailedOver", "pointing to westus instead of eastus"),
        ],
    },
}


def with_conditions(**statuses: str) -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["status"]["conditions"] = [condition(t, s, "Because") for t, s in statuses.items()]
    return policy


def run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(argv, io.StringIO(), stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


# -- status: the summary document ----------------------------------------------------------------


def test_summary_document_has_every_documented_field() -> None:
    summary = cli_status.summarize_policy(POLICY)
    assert summary["name"] == "contoso"
    assert summary["registry"] == "contoso.azurecr.io"
    assert summary["clusterRegion"] == "eastus"
    assert (summary["activeRegion"], summary["activeEndpoint"]) == ("westus", "contoso.westus.geo.azurecr.io")
    assert summary["healthy"] == "1/2"
    assert summary["workloads"] == {"total": 46, "pinned": 42, "awaitingReplication": 1, "skipped": 3, "invalid": 0}
    assert set(summary["conditions"]) == {
        "Ready",
        "Degraded",
        "FailedOver",
        "ControlPlaneUnavailable",
        "NodeCredentials",
    }
    assert summary["conditions"]["Ready"]["status"] == "True"
    assert summary["conditions"]["Degraded"]["reason"] == "ReplicaUnavailable"
    assert summary["conditions"]["ControlPlaneUnavailable"] is None
    assert [(r["region"], r["state"], r["consecutiveFailures"]) for r in summary["replicas"]] == [
        ("eastus", "Unhealthy", 4),
        ("westus", "Healthy", 0),
    ]
    assert summary["lastSwitch"] == {
        "from": "eastus",
        "to": "westus",
        "reason": "ReplicaUnhealthy",
        "time": "2026-11-28T03:09:40Z",
    }
    assert summary["ok"] is False  # Degraded


def test_summary_of_a_policy_without_status() -> None:
    summary = cli_status.summarize_policy({"metadata": {"name": "fresh"}, "spec": {"registry": "x.azurecr.io"}})
    assert summary["activeRegion"] is None
    assert summary["replicas"] == []
    assert summary["lastSwitch"] is None
    assert all(c is None for c in summary["conditions"].values())
    assert summary["ok"] is False
    text = cli_status.format_status_table(cli_status.status_document([summary_source("fresh")]), NOW)
    assert "no status yet" in text


def summary_source(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"registry": "x.azurecr.io"}}


@pytest.mark.parametrize(
    ("conditions", "ok"),
    [
        ({"Ready": "True", "Degraded": "False"}, True),
        ({"Ready": "True"}, True),
        ({"Ready": "True", "Degraded": "True"}, False),
        ({"Ready": "False", "Degraded": "False"}, False),
        ({"Ready": "Unknown", "Degraded": "False"}, False),
        ({"Degraded": "False"}, False),
        ({"Ready": "True", "Degraded": "False", "FailedOver": "True"}, True),
        ({"Ready": "True", "Degraded": "Unknown"}, True),
    ],
)
def test_exit_code_follows_ready_and_degraded(conditions: dict[str, str], ok: bool) -> None:
    document = cli_status.status_document([with_conditions(**conditions)])
    assert document["ok"] is ok
    assert cli_status.status_exit_code(document) == (0 if ok else 1)


def test_one_bad_policy_makes_the_whole_listing_fail() -> None:
    good = with_conditions(Ready="True", Degraded="False")
    bad = with_conditions(Ready="False", Degraded="False")
    bad["metadata"]["name"] = "other"
    assert cli_status.status_exit_code(cli_status.status_document([good, good])) == 0
    assert cli_status.status_exit_code(cli_status.status_document([good, bad])) == 1
    assert cli_status.status_exit_code(cli_status.status_document([])) == 0


# -- status: table, json, yaml ------------------------------------------------------------------


def test_status_table() -> None:
    text = cli_status.format_status_table(cli_status.status_document([POLICY]), NOW)
    lines = text.splitlines()
    assert lines[0].split() == [
        "NAME",
        "REGISTRY",
        "REGION",
        "ACTIVE",
        "HEALTHY",
        "PINNED",
        "READY",
        "DEGRADED",
        "FAILEDOVER",
    ]
    assert lines[1].split() == [
        "contoso",
        "contoso.azurecr.io",
        "eastus",
        "westus",
        "1/2",
        "42",
        "True",
        "True",
        "True",
    ]
    assert "Active:          westus (contoso.westus.geo.azurecr.io)" in lines
    assert "Healthy:         1/2" in lines
    assert "Workloads:       pinned 42, awaiting replication 1, skipped 3, invalid 0 (total 46)" in lines
    conditions = {
        line.split()[0]: line.split()[1:3] for line in lines if line.startswith("  ") and len(line.split()) > 2
    }
    assert conditions["Ready"] == ["True", "Reconciled"]
    assert conditions["Degraded"] == ["True", "ReplicaUnavailable"]
    assert conditions["FailedOver"] == ["True", "FailedOver"]
    assert conditions["ControlPlaneUnavailable"] == ["-", "-"]
    assert conditions["NodeCredentials"] == ["-", "-"]
    eastus = next(line for line in lines if line.startswith("  eastus"))
    assert eastus.split()[:5] == ["eastus", "contoso.eastus.geo.azurecr.io", "Unhealthy", "4", "2026-11-28T03:09:40Z"]
    assert "(5m ago)" in eastus
    assert eastus.endswith("connect timeout after 3s")
    westus = next(line for line in lines if line.startswith("  westus"))
    assert "(1d ago)" in westus
    assert "Last switch:     eastus -> westus (ReplicaUnhealthy) at 2026-11-28T03:09:40Z (5m ago)" in lines
    assert all(line == line.rstrip() for line in lines)


def test_status_table_notes_a_stale_status() -> None:
    policy = copy.deepcopy(POLICY)
    policy["metadata"]["generation"] = 4
    text = cli_status.format_status_table(cli_status.status_document([policy]), NOW)
    assert "status is for generation 3, the spec is at generation 4" in text


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_status_machine_output_round_trips(output: str) -> None:
    document = cli_status.status_document([POLICY])
    text = render(document, output)
    parsed = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert parsed == document
    assert parsed["ok"] is False
    (policy,) = parsed["policies"]
    assert policy["conditions"]["Ready"]["reason"] == "Reconciled"
    assert policy["lastSwitch"]["to"] == "westus"


def test_status_command_with_fetched_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str | None, str | None, float]] = []

    def fetch(kubeconfig: str | None, name: str | None, timeout: float) -> list[dict[str, Any]]:
        calls.append((kubeconfig, name, timeout))
        return [with_conditions(Ready="True", Degraded="False")]

    monkeypatch.setattr(cli_status, "fetch_policies", fetch)
    code, out, err = run(["status", "contoso", "--kubeconfig", "kc", "--request-timeout", "3"])
    assert (code, err) == (0, "")
    assert calls == [("kc", "contoso", 3.0)]
    assert out.splitlines()[1].split()[0] == "contoso"
    code, out, _ = run(["status", "-o", "json"])
    assert code == 0
    assert json.loads(out)["policies"][0]["name"] == "contoso"

    monkeypatch.setattr(cli_status, "fetch_policies", lambda *a: [with_conditions(Ready="False")])
    code, out, _ = run(["status", "-o", "yaml"])
    assert code == 1
    assert yaml.safe_load(out)["ok"] is False

    monkeypatch.setattr(cli_status, "fetch_policies", lambda *a: [])
    code, out, err = run(["status"])
    assert (code, out, err) == (0, "", "geopin: no RegistryPolicies found\n")


def test_status_problems_are_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(*_: Any) -> list[dict[str, Any]]:
        raise CliError("registrypolicy 'nope' not found")

    monkeypatch.setattr(cli_status, "fetch_policies", missing)
    assert run(["status", "nope"]) == (1, "", "geopin: registrypolicy 'nope' not found\n")
    monkeypatch.undo()

    code, out, err = run(["status", "--kubeconfig", str(tmp_path / "nonexistent")])
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "cannot read kubeconfig" in err
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [\n")
    code, _, err = run(["status", "--kubeconfig", str(garbage)])
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("geopin: cannot load kubeconfig")


# -- probe: flags --------------------------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert cli_probe.parse_endpoints([]) == {}
    assert cli_probe.parse_endpoints(["eastus=127.0.0.1:5000", "westus = reg.example.com"]) == {
        "eastus": "127.0.0.1:5000",
        "westus": "reg.example.com",
    }


@pytest.mark.parametrize(
    "value",
    [
        "eastus",
        "=host",
        "eastus=",
        "EastUS=host",
        "global=host",
        "eastus=https://host",
        "eastus=host/path",
        "eastus=host:port",
    ],
)
def test_malformed_endpoint_is_a_usage_error(value: str) -> None:
    with pytest.raises(CliError) as raised:
        cli_probe.parse_endpoints([value])
    assert raised.value.code == 2


def test_duplicate_endpoint_is_a_usage_error() -> None:
    with pytest.raises(CliError, match="twice"):
        cli_probe.parse_endpoints(["eastus=a", "eastus=b"])


def test_probe_targets() -> None:
    assert cli_probe.probe_targets("contoso.azurecr.io", ["eastus", "westus", "eastus"], {}, False) == [
        ("eastus", "contoso.eastus.geo.azurecr.io"),
        ("westus", "contoso.westus.geo.azurecr.io"),
    ]
    assert cli_probe.probe_targets("contoso.azurecr.cn", ["chinaeast2"], {}, True) == [
        ("chinaeast2", "contoso.chinaeast2.geo.azurecr.cn"),
        ("global", "contoso.azurecr.cn"),
    ]
    assert cli_probe.probe_targets("reg.example.com:5000", ["a1"], {"a1": "10.0.0.1:5000"}, False) == [
        ("a1", "10.0.0.1:5000")
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reg.example.com", "--region", "eastus"], "not an Azure Container Registry login server"),
        (["reg.example.com", "--region", "eastus", "--region", "westus", "--endpoint", "eastus=h"], "westus=HOST"),
        (["contoso.azurecr.io", "--region", "eastus", "--endpoint", "westus=h"], "not one of the --region"),
        (["contoso.azurecr.io", "--region", "East-US"], "invalid region"),
        (["contoso.azurecr.io", "--region", "global"], "--global"),
        (["https://contoso.azurecr.io", "--region", "eastus"], "REGISTRY"),
        (["contoso.azurecr.io", "--region", "eastus", "--endpoint", "eastus"], "REGION=HOST"),
        (["contoso.azurecr.io", "--region", "eastus", "--canary", "Not A Ref"], "--canary"),
    ],
)
def test_probe_usage_errors_exit_2_with_one_line(argv: list[str], message: str) -> None:
    code, out, err = run(["probe", *argv])
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "contoso.azurecr.io"],  # --region is required
        ["probe", "contoso.azurecr.io", "--region", "eastus", "--scheme", "ftp"],
        ["probe", "contoso.azurecr.io", "--region", "eastus", "--timeout", "0"],
        ["probe", "contoso.azurecr.io", "--region", "eastus", "--timeout", "soon"],
        ["probe", "contoso.azurecr.io", "--region", "eastus", "-o", "xml"],
        ["status", "a", "b"],
        ["status", "-o", "wide"],
        ["status", "--request-timeout", "-1"],
        ["status", "--bogus"],
    ],
)
def test_argparse_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv, io.StringIO(), io.StringIO(), io.StringIO())
    assert raised.value.code == 2
    assert "geopin: error:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "plan", "probe", "status", "version"])
def test_every_subcommand_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert f"geopin {command}" in text.split("examples:", 1)[1]
    if command in ("probe", "status"):
        assert "-o json|yaml" in text
        assert "exit status" in text


def test_unreadable_ca_is_a_problem_exit_1(tmp_path: Path) -> None:
    base = ["probe", "contoso.azurecr.io", "--region", "eastus"]
    code, out, err = run([*base, "--ca", str(tmp_path / "missing.pem")])
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "cannot read --ca" in err
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    code, _, err = run([*base, "--ca", str(not_pem)])
    assert code == 1
    assert err.count("\n") == 1
    assert "no PEM certificate" in err
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    code, _, err = run([*base, "--ca", str(broken)])
    assert code == 1
    assert err.count("\n") == 1
    assert "not a valid PEM" in err


# -- probe: results --------------------------------------------------------------------------------


def row(region: str, endpoint: str, outcome: Outcome, status: int | None, seconds: float, message: str = "") -> Any:
    return cli_probe.ProbeRow(region, endpoint, ProbeResult(outcome, status, seconds, message))


def test_probe_table_and_document() -> None:
    rows = [
        row("eastus", "contoso.eastus.geo.azurecr.io", Outcome.OK, 401, 0.0123, "registry answered 401"),
        row("centralus", "127.0.0.1:5002", Outcome.CONNECT, None, 0.0009, "connect: connection refused"),
    ]
    lines = cli_probe.format_probe_table(rows).splitlines()
    assert lines[0].split() == ["REGION", "ENDPOINT", "OUTCOME", "STATUS", "LATENCY", "MESSAGE"]
    assert lines[1].split()[:5] == ["eastus", "contoso.eastus.geo.azurecr.io", "ok", "401", "12ms"]
    assert lines[2].split()[:5] == ["centralus", "127.0.0.1:5002", "connect", "-", "1ms"]
    assert lines[2].endswith("connect: connection refused")
    document = cli_probe.probe_document("contoso.azurecr.io", rows)
    assert document["ok"] is False
    assert document["probes"][1] == {
        "region": "centralus",
        "endpoint": "127.0.0.1:5002",
        "outcome": "connect",
        "status": None,
        "latencyMilliseconds": 1,
        "message": "connect: connection refused",
    }
    assert cli_probe.probe_document("contoso.azurecr.io", rows[:1])["ok"] is True


def mock_registry(request: httpx.Request) -> httpx.Response:
    host = request.url.host
    if host.startswith("contoso.westus."):
        return httpx.Response(503)
    if host == "contoso.azurecr.io":
        raise httpx.ConnectError("refused", request=request)
    return httpx.Response(200, json={})


@pytest.fixture
def mocked_client(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    made: list[tuple[str, float]] = []

    def make_client(scheme: str, timeout: float, ca_bundle: str) -> RegistryClient:
        made.append((scheme, timeout))
        return RegistryClient(scheme=scheme, timeout_seconds=timeout, transport=httpx.MockTransport(mock_registry))

    monkeypatch.setattr(cli_probe, "make_client", make_client)
    return made


def test_probe_command_all_ok(mocked_client: list[tuple[str, float]]) -> None:
    code, out, err = run(["probe", "contoso.azurecr.io", "--region", "eastus", "--scheme", "http", "--timeout", "4"])
    assert (code, err) == (0, "")
    assert mocked_client == [("http", 4.0)]
    assert out.splitlines()[1].split()[:4] == ["eastus", "contoso.eastus.geo.azurecr.io", "ok", "200"]


def test_probe_command_failures_exit_1(mocked_client: list[tuple[str, float]]) -> None:
    argv = ["probe", "contoso.azurecr.io", "--region", "eastus", "--region", "westus", "--global"]
    code, out, _ = run(argv)
    assert code == 1
    outcomes = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert outcomes == {"eastus": "ok", "westus": "http_5xx", "global": "connect"}
    code, out, _ = run([*argv, "-o", "json"])
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False
    assert [(p["region"], p["outcome"], p["status"]) for p in document["probes"]] == [
        ("eastus", "ok", 200),
        ("westus", "http_5xx", 503),
        ("global", "connect", None),
    ]
    code, out, _ = run([*argv, "-o", "yaml"])
    assert code == 1
    parsed = yaml.safe_load(out)
    assert parsed["registry"] == "contoso.azurecr.io"
    assert [p["outcome"] for p in parsed["probes"]] == ["ok", "http_5xx", "connect"]
