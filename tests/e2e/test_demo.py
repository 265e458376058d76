"""`make demo DEMO_ARGS=--once` runs the whole tour (so the newcomer's first command never rots)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.controlplane import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_demo_once_narrates_failover_and_failback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.demo", "--once"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "1. pinned to the home region eastus" in out
    assert "2. outage: the eastus replica" in out
    assert "failover to westus in" in out
    assert "failback to eastus" in out
    assert "Event ReplicaUnhealthy" in out
    assert "Event EndpointSwitched" in out
    assert 'geopin_endpoint_switches_total{from_region="eastus"' in out
    assert "tour done in" in out
