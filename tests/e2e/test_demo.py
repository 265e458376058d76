"""`make demo DEMO_ARGS=--once` runs the whole tour (so the newcomer's first command never rots): real
Pods on a real node, the kubelet's Pulled Events naming the regional hosts, the global endpoint beside."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.controlplane import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]


def test_demo_once_narrates_failover_and_failback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.demo", "--once"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "1. pinned to the home region eastus" in out
    assert 'Successfully pulled image "contoso.eastus.geo.azurecr.io/shop/web:1"' in out
    assert "via contoso.eastus.data.azurecr.io" in out  # the deep probe's download path
    assert "2. outage: the eastus replica" in out
    assert "geopin: Deployments repointed to westus in" in out
    assert 'Successfully pulled image "contoso.westus.geo.azurecr.io/shop/web:1"' in out
    assert "kubelet Failed  pod/web-via-global" in out
    assert 'Successfully pulled image "contoso.azurecr.io/shop/web:1"' in out
    assert "side by side: geopin's Pods ran" in out
    assert "failback to eastus" in out
    assert "Event ReplicaUnhealthy" in out
    assert "Event EndpointSwitched" in out
    assert 'geopin_endpoint_switches_total{from_region="eastus"' in out
    assert "tour done in" in out
