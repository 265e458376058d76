"""The MutatingWebhookConfiguration geopin writes on start, and the `geopin run` flags that shape it."""

from __future__ import annotations

import base64

import pytest

from geopin.cli.main import _parser
from geopin.io.webhook import PATH, webhook_configuration

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def hook(**kwargs: object) -> dict[str, object]:
    options: dict[str, object] = {"url": None, "service": ("geopin-system", "geopin", 443)}
    options.update(kwargs)
    config = webhook_configuration("geopin", CA, operator_namespace="geopin-system", **options)  # type: ignore[arg-type]
    assert len(config["webhooks"]) == 1
    result: dict[str, object] = config["webhooks"][0]
    return result


def test_defaults_fail_open_after_two_seconds() -> None:
    webhook = hook()
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 2
    assert webhook["clientConfig"] == {
        "service": {"namespace": "geopin-system", "name": "geopin", "port": 443, "path": PATH},
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "geopin-system"]}
        ]
    }


def test_failure_policy_and_timeout_are_written_as_given() -> None:
    webhook = hook(failure_policy="Fail", timeout_seconds=30)
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 30)
    # Everything else is the same configuration: only the two fields move.
    assert {k: v for k, v in webhook.items() if k not in ("failurePolicy", "timeoutSeconds")} == {
        k: v for k, v in hook().items() if k not in ("failurePolicy", "timeoutSeconds")
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_policy": "ignore"}, "failurePolicy must be one of Ignore, Fail"),
        ({"timeout_seconds": 0}, "timeoutSeconds must be 1 to 30, got 0"),
        ({"timeout_seconds": 31}, "timeoutSeconds must be 1 to 30, got 31"),
    ],
)
def test_values_the_api_server_would_reject_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hook(**kwargs)


def test_url_client_config() -> None:
    webhook = hook(url="https://127.0.0.1:9443/", service=None)
    assert webhook["clientConfig"] == {
        "url": f"https://127.0.0.1:9443{PATH}",
        "caBundle": base64.b64encode(CA).decode(),
    }


def test_run_flags_default_and_parse() -> None:
    defaults = _parser().parse_args(["run"])
    assert (defaults.webhook_failure_policy, defaults.webhook_timeout_seconds) == ("Ignore", 2)
    given = _parser().parse_args(["run", "--webhook-failure-policy", "Fail", "--webhook-timeout-seconds", "10"])
    assert (given.webhook_failure_policy, given.webhook_timeout_seconds) == ("Fail", 10)


@pytest.mark.parametrize(
    "argv",
    [
        ["--webhook-failure-policy", "Warn"],
        ["--webhook-timeout-seconds", "0"],
        ["--webhook-timeout-seconds", "31"],
        ["--webhook-timeout-seconds", "2.5"],
    ],
)
def test_bad_run_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["run", *argv])
    assert exited.value.code == 2
    assert "geopin: error:" in capsys.readouterr().err


def test_the_flags_reach_the_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import geopin.cli.run
    from geopin.cli.main import main
    from geopin.core.config import RunConfig

    seen: list[RunConfig] = []
    monkeypatch.setattr(geopin.cli.run, "run", seen.append)
    assert main(["run", "--webhook-failure-policy=Fail", "--webhook-timeout-seconds=5"]) == 0
    assert (seen[0].webhook_failure_policy, seen[0].webhook_timeout_seconds) == ("Fail", 5)
