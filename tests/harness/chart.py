"""The Helm chart as the tests render it: the real helm (hack/tools/build.sh) and the value sets."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["ALL_FEATURES", "CHART", "ROOT", "template_args", "tools_bin"]

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
