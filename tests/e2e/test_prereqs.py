"""hack/prereqs.sh, the first step of make demo/test/dev-up: one line and exit 2 for whatever is missing.

Each case runs the real script with a PATH that holds the machine's real commands minus the ones the
case takes away (so nothing is installed or removed here), as root and as an unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness.controlplane import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

SCRIPT = REPO_ROOT / "hack" / "prereqs.sh"
# What the script itself runs, plus every command it checks for.
TOOLS = ("bash", "env", "id", "sed", "sort", "go")
CHECKED: tuple[str, ...] = ("docker-registry", "htpasswd", "containerd", "ctr", "runc", "unshare", "nsenter")
CHECKED += ("mount", "getent", "make", "git", "buildah", "skopeo", "umoci", "mmdebstrap")
NOBODY = (shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def path_without(tmp_path: Path, *absent: str) -> str:
    """A PATH directory of symlinks to this machine's commands, except `absent`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in (*TOOLS, *CHECKED):
        found = shutil.which(name)
        assert found, f"{name} must be installed for this test"
        if name not in absent:
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def run(path: str, *args: str, prefix: tuple[str, ...] = (), python: str = "/usr/bin/python3") -> tuple[int, str]:
    env = {"PATH": path, "PYTHON": python, "HOME": "/nonexistent", "GOTOOLCHAIN": "local"}
    result = subprocess.run(
        [*prefix, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    return result.returncode, output


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory the unprivileged user can read too (pytest's own are private to root)."""
    if os.geteuid() != 0:
        pytest.fail("these cases switch to an unprivileged user, which needs root", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="geopin-prereqs-") as directory:
        Path(directory).chmod(0o755)
        yield Path(directory)


def test_everything_present_as_root_passes(tmp_path: Path) -> None:
    assert run(path_without(tmp_path)) == (0, "")


def test_dry_run_names_the_missing_debian_packages(tmp_path: Path) -> None:
    code, output = run(path_without(tmp_path, "containerd", "ctr", "runc"), "--dry-run")
    assert code == 2
    assert output == (
        "geopin prerequisites: would run: apt-get update && "
        "apt-get install -y --no-install-recommends containerd runc\n"
    )


def test_unprivileged_user_gets_one_line_with_the_command(tmp_path: Path) -> None:
    code, output = run(path_without(tmp_path, "docker-registry", "htpasswd"), prefix=NOBODY)
    assert code == 2
    assert output == (
        "geopin prerequisites: missing Debian packages apache2-utils docker-registry; install them with: "
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends apache2-utils docker-registry\n"
    )


def test_unprivileged_user_with_everything_is_told_root_is_needed(tmp_path: Path) -> None:
    code, output = run(path_without(tmp_path), prefix=NOBODY)
    assert code == 2
    assert output.count("\n") == 1
    assert "needs root" in output


def test_missing_go_is_one_line(tmp_path: Path) -> None:
    code, output = run(path_without(tmp_path, "go"))
    assert code == 2
    assert output.count("\n") == 1
    assert "Go 1.21 or newer is needed" in output or "not on PATH" in output


def test_old_python_is_one_line(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    code, output = run(path_without(tmp_path), python=str(old))
    assert code == 2
    assert output == (
        f"geopin prerequisites: Python 3.11 or newer is needed; '{old}' is 3.9 (set PYTHON=/path/to/python3.11)\n"
    )
