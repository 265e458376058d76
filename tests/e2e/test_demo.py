"""`make demo --once` runs end to end (so the newcomer's first command never rots)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.controlplane import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_demo_once_pins_the_sample_deployment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.demo", "--once"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "geopin pinned shop/web to eastus: image is now 127.0.0.1:" in result.stdout
    assert "pinned workloads 1" in result.stdout
