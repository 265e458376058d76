"""docs/api.md is generated from the RegistryPolicy CRD by hack/gen_api_docs.py and must not drift from it.

The generator is imported from its file (hack/ is not a package) and run in check mode: no subprocess.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "hack" / "gen_api_docs.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_api_md_is_up_to_date(gen: ModuleType) -> None:
    problem = gen.check()
    assert problem is None, problem


def test_generated_text_equals_the_committed_file(gen: ModuleType) -> None:
    assert gen.generate() == (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


def test_generation_is_deterministic(gen: ModuleType) -> None:
    assert gen.generate() == gen.generate()


def test_check_mode_reports_drift_in_one_line(
    gen: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(gen.generate() + "edited by hand\n", encoding="utf-8")
    assert gen.main(["--check", "--output", str(stale)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "out of date" in err
    assert stale.read_text(encoding="utf-8").endswith("edited by hand\n"), "--check must not write"

    assert gen.main(["--output", str(stale)]) == 0
    assert gen.main(["--check", "--output", str(stale)]) == 0


def test_check_mode_reports_a_missing_file(gen: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--check", "--output", str(tmp_path / "absent.md")]) == 1
    assert "is missing" in capsys.readouterr().err


def test_every_object_of_the_schema_has_a_table(gen: ModuleType) -> None:
    text = gen.generate()
    for heading in (
        "### `spec`\n",
        "### `spec.replicas[]`\n",
        "### `spec.azure`\n",
        "### `spec.probe`\n",
        "### `spec.credentials`\n",
        "### `spec.namespaceSelector`, `spec.workloadSelector`\n",
        "### `status`\n",
        "### `status.replicas[]`\n",
        "### `status.workloads`\n",
        "### `status.lastSwitch`\n",
        "### `status.conditions[]`\n",
    ):
        assert heading in text


def test_schema_facts_reach_the_tables(gen: ModuleType) -> None:
    text = gen.generate()
    assert "| `mode` | string | `Patch` | one of `Patch`, `Admission`, `Audit` |" in text
    assert "| `refreshSeconds` | integer (int32) | `300` | minimum 30; maximum 86400 |" in text
    assert "| `region` | string | `auto` | pattern `^(auto\\|[a-z0-9]+)$` |" in text
    assert "spec.probe.timeoutSeconds must not exceed spec.probe.intervalSeconds" in text
    assert "| short names | `rp` |" in text
    assert "| scope | cluster-scoped |" in text
    for annotation in ("skip", "region", "original-images", "pinned-region"):
        assert f"`geopin.io/{annotation}" in text


def test_every_cel_rule_is_listed(gen: ModuleType) -> None:
    crd = gen.load_crd()
    text = gen.generate()

    def rules(schema: object) -> list[str]:
        if isinstance(schema, dict):
            found = [str(r["message"]) for r in schema.get("x-kubernetes-validations", [])]
            return found + [m for value in schema.values() for m in rules(value)]
        if isinstance(schema, list):
            return [m for value in schema for m in rules(value)]
        return []

    messages = rules(crd["spec"]["versions"][0]["schema"])
    assert len(messages) >= 5
    for message in messages:
        assert gen._text(message) in text
