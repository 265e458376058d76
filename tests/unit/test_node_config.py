"""The local nodes' configuration files and credential plugin (tests/harness/nodes.py, hack/node/),
checked without starting anything."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.harness.nodecleanup import _unescape_mount_path
from tests.harness.nodeconfig import (
    AKS_BEFORE_GEO,
    AKS_WITH_GEO,
    CREDENTIAL_PROVIDER_PLUGIN,
    SANDBOX_IMAGE,
    NodePaths,
    containerd_config,
    hosts_toml,
    render_toml,
)

GEO = ("*.*.geo.azurecr.io", "*.*.geo.azurecr.cn", "*.*.geo.azurecr.de", "*.*.geo.azurecr.us")
GLOBAL = ("*.azurecr.io", "*.azurecr.cn", "*.azurecr.de", "*.azurecr.us")


def test_containerd_config_is_toml_that_containerd_reads() -> None:
    paths = NodePaths(Path("/w/node"))
    parsed = tomllib.loads(
        render_toml(containerd_config(paths, runc_wrapper=Path("/b/geopin-runc"), stream_address="127.0.0.1"))
    )
    assert parsed["version"] == 2
    assert parsed["grpc"]["address"] == "/w/node/containerd.sock"
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == SANDBOX_IMAGE
    assert cri["containerd"]["snapshotter"] == "native"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {
        "BinaryName": "/b/geopin-runc",
        "Root": "/w/node/containerd/runc",
        "SystemdCgroup": False,
    }
    assert cri["registry"]["config_path"] == "/w/node/certs.d"
    assert "io.containerd.snapshotter.v1.overlayfs" in parsed["disabled_plugins"]


@pytest.mark.parametrize("host", ["contoso.eastus.geo.azurecr.io", "127.0.0.1:5000"])
def test_hosts_toml_names_the_host_and_its_ca(host: str) -> None:
    parsed = tomllib.loads(render_toml(hosts_toml(host, Path("/pki/ca.crt"))))
    assert parsed == {"server": f"https://{host}", "host": {f"https://{host}": {"ca": "/pki/ca.crt"}}}


def test_mount_points_are_unescaped_as_mountinfo_escapes_them() -> None:
    assert _unescape_mount_path(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"


def test_the_aks_lists_differ_only_by_the_geo_entries() -> None:
    assert tuple(AKS_BEFORE_GEO.match_images) == GLOBAL
    assert tuple(AKS_WITH_GEO.match_images) == GLOBAL + GEO
    assert AKS_BEFORE_GEO.node_image_version < AKS_WITH_GEO.node_image_version
    assert AKS_WITH_GEO.node_image_version.endswith("-202607.29.0")


def test_a_node_gets_the_aks_config_with_its_own_credentials_file() -> None:
    fixture = yaml.safe_load(AKS_WITH_GEO.path.read_text())
    config = AKS_WITH_GEO.config(Path("/w/node/credential-provider/credentials.json"))
    assert config["providers"][0]["args"] == ["/w/node/credential-provider/credentials.json"]
    fixture["providers"][0]["args"] = config["providers"][0]["args"]
    assert config == fixture
    assert config["providers"][0]["name"] == CREDENTIAL_PROVIDER_PLUGIN.name


def run_plugin(request: dict[str, str], credentials: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CREDENTIAL_PROVIDER_PLUGIN), str(credentials)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_plugin_answers_the_password_of_the_requested_host_only(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"contoso.eastus.geo.azurecr.io": {"username": "contoso", "password": "pw"}}))
    request = {"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest"}

    known = run_plugin({**request, "image": "contoso.eastus.geo.azurecr.io/shop/web:1"}, credentials)
    response = json.loads(known.stdout)
    assert response["kind"] == "CredentialProviderResponse"
    assert response["apiVersion"] == "credentialprovider.kubelet.k8s.io/v1"
    assert response["auth"] == {"contoso.eastus.geo.azurecr.io": {"username": "contoso", "password": "pw"}}

    unknown = run_plugin({**request, "image": "contoso.westus.geo.azurecr.io/shop/web:1"}, credentials)
    assert json.loads(unknown.stdout)["auth"] == {}

    wrong = run_plugin(
        {**request, "apiVersion": "credentialprovider.kubelet.k8s.io/v1alpha1", "image": "x/y"}, credentials
    )
    assert wrong.returncode == 1
    assert "CredentialProviderRequest" in wrong.stderr
