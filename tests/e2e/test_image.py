"""The container image, built for real from the Dockerfile without a Docker daemon (`make image`,
hack/image/build.sh: buildah with chroot isolation on a Debian-built python3.11 base), from a fresh
clone of the commit under test and in the checkout itself (the build test_install_local installs).

Proven here: the two builds are identical (layer, config and manifest digests; the SBOM byte for
byte), the image runs `geopin version` as UID/GID 65532 from a read-only root filesystem (umoci
unpacks it, runc runs it with the image's own user and environment), its SBOM is valid CycloneDX
and lists exactly the runtime lock's pins, and `make image-push` puts the same manifest digest into
a real registry over verified TLS with basic auth.

The builds take about a minute each (the base image is cached in ~/.cache/geopin/image-base).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.harness import installlocal
from tests.harness.registries import Registry

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness.pki import CA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Build:
    layout: Path
    summary: dict[str, Any]
    sbom: bytes

    @property
    def image(self) -> str:
        return f"{self.layout}:{self.summary['reference']}"


@dataclass(frozen=True)
class Builds:
    clone: Path
    first: Build
    second: Build


def _build(clone: Path, out: Path) -> Build:
    env = {**os.environ, "IMAGE_OUT": str(out), "VENV_BIN": str(Path(sys.executable).parent)}
    result = subprocess.run(
        [str(clone / "hack/image/build.sh")], cwd=clone, env=env, capture_output=True, text=True, timeout=840
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    return Build(out, summary, out.with_name(out.name + ".sbom.json").read_bytes())


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Two builds of one commit in two directories: the checkout's own (`make image`'s build/, which
    test_install_local installs) and a fresh clone's. A checkout with uncommitted changes in the build
    context builds no image of the commit, so the clone is built twice then."""
    clone = tmp_path_factory.mktemp("image") / "geopin"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    if not installlocal.context_is_clean():
        return Builds(clone, _build(clone, clone / "build/first/image"), _build(clone, clone / "build/second/image"))
    summary = installlocal.ensure_image()
    # The clone builds the very commit the checkout's image is of (HEAD may have moved since the clone).
    _git(clone, "checkout", "--quiet", summary["labels"]["org.opencontainers.image.revision"])
    first = Build(installlocal.IMAGE_DIR, summary, installlocal.SBOM.read_bytes())
    return Builds(clone, first, _build(clone, clone / "build/second/image"))


def _run(build: Build, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "hack/image/run.sh"), build.image, *command], capture_output=True, text=True, timeout=180
    )


def _git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True, text=True).stdout.strip()


def test_two_builds_of_one_commit_are_identical(builds: Builds) -> None:
    first, second = builds.first.summary, builds.second.summary
    assert [layer["digest"] for layer in first["layers"]] == [layer["digest"] for layer in second["layers"]]
    assert [layer["diff_id"] for layer in first["layers"]] == [layer["diff_id"] for layer in second["layers"]]
    assert (first["config"], first["manifest"]) == (second["config"], second["manifest"])
    assert builds.first.sbom == builds.second.sbom
    # The base, then geopin's venv: the final stage adds one layer, /opt/geopin and nothing else,
    # every file dated at the commit (buildah --timestamp).
    assert len(first["layers"]) == 2
    epoch = int(_git(builds.clone, "log", "-1", "--format=%ct"))
    layer = builds.first.layout / "blobs" / first["layers"][1]["digest"].replace(":", "/")
    with tarfile.open(layer, "r:gz") as tar:
        members = tar.getmembers()
    assert {m.name.split("/")[0] for m in members} == {"opt"}
    assert {m.name for m in members if m.name.count("/") <= 1} == {"opt", "opt/geopin"}
    assert {m.mtime for m in members} == {epoch}


def test_labels_name_the_commit(builds: Builds) -> None:
    labels = builds.first.summary["labels"]
    epoch = int(_git(builds.clone, "log", "-1", "--format=%ct"))
    assert labels["org.opencontainers.image.revision"] == _git(builds.clone, "rev-parse", "HEAD")
    assert labels["org.opencontainers.image.created"] == dt.datetime.fromtimestamp(epoch, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    init = (builds.clone / "operator/geopin/__init__.py").read_text()
    version = re.search(r'^__version__ = "(.+)"$', init, re.MULTILINE)
    assert version is not None
    assert labels["org.opencontainers.image.version"] == version.group(1) == builds.first.summary["reference"]
    assert labels["org.opencontainers.image.base.name"] == "localhost/geopin-python:3.11-bookworm"


def test_image_runs_geopin_as_a_non_root_user(builds: Builds) -> None:
    summary = builds.first.summary
    assert summary["user"] == "65532:65532"
    assert (summary["entrypoint"], summary["cmd"]) == (["geopin"], ["run"])
    script = "id -u; id -g; geopin version; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status"
    result = _run(builds.first, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "65532",
        "65532",
        "geopin",
        summary["reference"],
        "CapEff:",
        "0000000000000000",
        "NoNewPrivs:",
        "1",
    ]


def test_image_root_filesystem_is_read_only_and_bytecode_is_precompiled(builds: Builds) -> None:
    # The Dockerfile compiles every module with --invalidation-mode unchecked-hash: pyc flags 0b01
    # (hash-based, source not checked), so that nothing needs writing at run time.
    probe = (
        "import importlib.util, sys, geopin.cli, kopf, kubernetes, azure.identity\n"
        "assert sys.version_info[:2] == (3, 11), sys.version\n"
        "for module in (geopin.cli, kopf, kubernetes):\n"
        "    pyc = open(importlib.util.cache_from_source(module.__file__), 'rb').read(8)\n"
        "    assert int.from_bytes(pyc[4:8], 'little') == 1, (module, pyc)\n"
        "open('/opt/geopin/probe', 'w')\n"
    )
    result = _run(builds.first, "python", "-c", probe)
    assert result.returncode == 1
    assert "OSError: [Errno 30] Read-only file system: '/opt/geopin/probe'" in result.stderr, result.stderr


def test_sbom_is_valid_cyclonedx_listing_the_runtime_lock(builds: Builds) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(builds.first.sbom.decode())
    assert errors is None, errors
    sbom = json.loads(builds.first.sbom)
    image = sbom["metadata"]["component"]
    manifest = builds.first.summary["manifest"]
    assert image["type"] == "container"
    assert image["hashes"] == [{"alg": "SHA-256", "content": manifest.removeprefix("sha256:")}]
    assert image["purl"] == f"pkg:oci/geopin@{manifest.replace(':', '%3A')}?tag={builds.first.summary['reference']}"
    found = {_canonical(c["name"]): c["version"] for c in sbom["components"]}
    lock = (builds.clone / "requirements/runtime.lock").read_text()
    pinned = {_canonical(name): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}
    assert found == {**pinned, "geopin": builds.first.summary["reference"]}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture
def registry(ca: CA) -> Iterator[Registry]:
    with Registry("image-push", ca, auth=("pusher", "s3cret-push")) as reg:
        yield reg


def test_image_push_sends_the_same_manifest_over_verified_tls(builds: Builds, registry: Registry, ca: CA) -> None:
    env = {
        **os.environ,
        "IMAGE_OUT": str(builds.first.layout),
        "REGISTRY_USERNAME": "pusher",
        "REGISTRY_PASSWORD": "s3cret-push",
    }
    push = [str(ROOT / "hack/image/push.sh"), registry.endpoint, "platform/geopin"]
    untrusted = subprocess.run(push, env=env, capture_output=True, text=True, timeout=180)
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr

    result = subprocess.run(
        push, env={**env, "REGISTRY_CA": str(ca.cert_path)}, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    manifest = builds.first.summary["manifest"]
    assert result.stdout.strip() == f"{registry.endpoint}/platform/geopin@{manifest}"
    assert "s3cret-push" not in result.stdout + result.stderr

    with registry.client() as http:
        tag = builds.first.summary["reference"]
        response = http.get(f"/v2/platform/geopin/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert response.status_code == httpx.codes.OK
        assert response.headers["Docker-Content-Digest"] == manifest
        for layer in builds.first.summary["layers"]:
            head = http.head(f"/v2/platform/geopin/blobs/{layer['digest']}")
            assert head.status_code == httpx.codes.OK
            assert int(head.headers["Content-Length"]) == layer["size"]
