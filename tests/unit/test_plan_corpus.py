"""`geopin plan` over real-world manifests: Helm and kustomize renders of charts modelled on popular ones
(tests/fixtures/manifests, rendered by hack/render-corpus.sh). Only image hosts change, and geopin's
annotations are added: every other value reads the same by YAML 1.1, YAML 1.2 and kubectl's rules.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest

from geopin.cli.main import main
from geopin.core.references import split_reference
from tests.unit.test_properties_plan import POLICY_FILE, _kubectl, _pyyaml, _ruamel, canonical, undo_rewrite

RENDERED = sorted((Path(__file__).parents[1] / "fixtures" / "manifests" / "rendered").glob("*.yaml"))


def test_the_corpus_is_there() -> None:
    names = {path.name.split("-", 1)[0] for path in RENDERED}
    assert names == {"helm", "kustomize"}
    assert len(RENDERED) >= 8


def _images(tree: object) -> list[str]:
    if isinstance(tree, dict):
        found = [tree["image"]] if isinstance(tree.get("image"), str) else []
        return found + [i for value in tree.values() for i in _images(value)]
    if isinstance(tree, list):
        return [i for item in tree for i in _images(item)]
    return []


@pytest.mark.parametrize("path", RENDERED, ids=[p.stem for p in RENDERED])
def test_plan_changes_only_image_hosts(path: Path) -> None:
    source = path.read_text()
    out, err = io.StringIO(), io.StringIO()
    code = main(["plan", "--policy", POLICY_FILE, "-"], io.StringIO(source), out, err)
    assert code == 0, err.getvalue()
    summary = err.getvalue().splitlines()[-1]
    assert summary.endswith("; 0 warnings"), summary
    assert not summary.startswith("geopin plan: 0 images"), "a corpus file with nothing to rewrite proves nothing"
    output = out.getvalue()
    for read in (_pyyaml, _ruamel, _kubectl):
        before, after = read(source), read(output)
        assert before is not None, f"{read.__name__} cannot read {path.name}"
        assert after is not None, f"{read.__name__} cannot read the plan of {path.name}"
        assert len(before) == len(after)
        for b, a in zip(before, after, strict=True):
            assert canonical(undo_rewrite(b, copy.deepcopy(a))) == canonical(b), (read.__name__, b, a)
    before_images, after_images = _images(_kubectl(source)), _images(_kubectl(output))
    moved = [(b, a) for b, a in zip(before_images, after_images, strict=True) if b != a]
    assert moved
    for old, new in moved:
        assert split_reference(old) == ("contoso.azurecr.io", split_reference(new)[1])
        assert split_reference(new)[0] == "contoso.eastus.geo.azurecr.io"
    # What stays on the registry is in objects geopin does not rewrite (Jobs, Pods: api.md's rewrite rules).
    untouched = {b for b, a in zip(before_images, after_images, strict=True) if b == a}
    elsewhere = {i for doc in _kubectl(source) or [] if doc.get("kind") in ("Job", "Pod") for i in _images(doc)}
    assert {i for i in untouched if split_reference(i)[0] == "contoso.azurecr.io"} <= elsewhere
