"""`geopin plan` on any YAML stream: exit 0, 1 or 2, never a traceback, and every value it does not rewrite
reads the same afterwards, by YAML 1.1 (PyYAML), by YAML 1.2 (ruamel.yaml's safe loader) and by kubectl's
rules: only image hosts and geopin's own annotations may differ.

The streams are built from manifests whose scalars are the ones readers disagree on (12:30, 0777, yes,
timestamps, .inf ...), printed plain, then sometimes cut or spliced so that they are not YAML any more.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from geopin.cli import manifests
from geopin.cli.main import main
from geopin.core.references import split_reference
from tests.unit.conftest import examples

POLICY_FILE = str(Path(__file__).parents[1] / "fixtures" / "manifests" / "policy.yaml")

# Plain scalars that YAML 1.1, YAML 1.2 and kubectl read differently, or that look like structure.
TRICKY = [
    "12:30", "5:30:10", "0777", "0o17", "0x1F", "0b101", "1_000", "+12", "-0", ".5", "1e3", "1.0e+3",
    "yes", "no", "on", "off", "y", "n", "True", "FALSE", "~", "null", "Null", ".inf", "-.inf", ".nan",
    "2001-12-14t21:59:43.10-05:00", "2002-12-14", "08", "09.5", "=", "<<", "a: b", "- x", "# not a comment",
    "@x", "`x", "!x", "&x", "*x", "%x", "{a}", "[a]", "'q'", '"q"', "", " lead", "trail ", "tab\there",
    "line\nbreak", "ü", "☃", "\x85", "0.0.1", "1.2.3.4:80", "contoso.azurecr.io/app:1",
]  # fmt: skip
SCALARS = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
PLAIN_OR_QUOTED = st.one_of(st.sampled_from(TRICKY).map(manifests.PlainScalar), SCALARS)
IMAGES = st.sampled_from(
    [
        "contoso.azurecr.io/shop/web:1",
        "contoso.azurecr.io/shop/api@sha256:" + "a" * 64,
        "Contoso.AzureCR.io/team/x:2",
        "nginx:1.27",
        "fabrikam.azurecr.io/x:1",
        "contoso.azurecr.io/Bad:1",
    ]
)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(TRICKY).map(manifests.PlainScalar), st.text(min_size=1, max_size=8))
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
        max_leaves=8,
    )


@st.composite
def workload(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Deployment", "StatefulSet", "DaemonSet", "CronJob", "ReplicaSet"]))
    names = draw(st.lists(st.sampled_from(["web", "api", "side"]), min_size=1, max_size=3, unique=True))
    containers = [
        {"name": n, "image": draw(IMAGES), "args": draw(st.lists(PLAIN_OR_QUOTED, max_size=3))} for n in names
    ]
    pod: dict[str, Any] = {"containers": containers, "extra": draw(trees(PLAIN_OR_QUOTED))}
    spec: dict[str, Any] = {"template": {"metadata": {"labels": {"app": "x"}}, "spec": pod}}
    if kind == "CronJob":
        spec = {"schedule": manifests.PlainScalar("30 12 * * *"), "jobTemplate": {"spec": spec}}
    annotations = draw(st.dictionaries(st.sampled_from(["a", "note", "window"]), PLAIN_OR_QUOTED, max_size=2))
    group = "batch/v1" if kind == "CronJob" else "apps/v1"
    return {
        "apiVersion": group,
        "kind": kind,
        "metadata": {"name": draw(st.sampled_from(["w1", "w2"])), "namespace": "shop", "annotations": annotations},
        "spec": spec,
    }


DOCUMENTS = st.one_of(
    workload(),
    workload().map(lambda w: {"apiVersion": "v1", "kind": "List", "items": [w]}),
    st.builds(lambda data: {"apiVersion": "v1", "kind": "ConfigMap", "data": data}, trees(PLAIN_OR_QUOTED)),
    trees(PLAIN_OR_QUOTED),
)


def render(documents: list[Any]) -> str:
    out = io.StringIO()
    manifests.dump(documents, out)
    return out.getvalue()


@st.composite
def streams(draw: st.DrawFn) -> str:
    """A YAML stream, sometimes damaged: cut short, or with a piece of another stream spliced in."""
    text = render(draw(st.lists(DOCUMENTS, min_size=1, max_size=3)))
    damage = draw(st.sampled_from(["none", "none", "cut", "splice", "indent"]))
    if damage == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "splice":
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from(["\t", ": ", "- ", "{", "]", "&a ", "*b", "\n---\n", "'", '"']))
            + text[at:]
        )
    elif damage == "indent":
        lines = text.splitlines(keepends=True)
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        if lines:
            lines[index] = " " + lines[index]
        text = "".join(lines)
    return text


# --------------------------------------------------------------------------- the oracle: independent readers


def _pyyaml(text: str) -> list[Any] | None:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except Exception:  # PyYAML raises KeyError, ValueError ... for an explicit tag on a value it cannot take
        return None


def _ruamel(text: str) -> list[Any] | None:
    try:
        return [d for d in YAML(typ="safe", pure=True).load_all(text) if d is not None]
    except Exception:  # ruamel raises its own errors and a few of Python's on malformed input
        return None


def _kubectl(text: str) -> list[Any] | None:
    try:
        return [d.value for d in manifests.load(text)]
    except manifests.ManifestError:
        return None


def canonical(tree: Any) -> Any:
    """Comparable form: NaN equals NaN, ints and floats keep their type, mapping order does not matter."""
    if isinstance(tree, dict):
        return ("map", sorted(((repr(canonical(k)), canonical(v)) for k, v in tree.items()), key=lambda kv: kv[0]))
    if isinstance(tree, list):
        return ("seq", [canonical(x) for x in tree])
    if isinstance(tree, float):
        return ("float", "nan" if math.isnan(tree) else repr(tree))
    return (type(tree).__name__, tree)


def undo_rewrite(before: Any, after: Any) -> Any:
    """``after`` with what plan may change put back as in ``before``: images that only changed host, and
    geopin's annotations. Everything else must then be equal."""
    if isinstance(before, dict) and isinstance(after, dict):
        restored = {}
        for key, value in after.items():
            if key not in before:
                if isinstance(key, str) and key.startswith("geopin.io/"):
                    continue
                if key == "annotations" and value and all(str(k).startswith("geopin.io/") for k in value):
                    continue
                restored[key] = value
            else:
                restored[key] = undo_rewrite(before[key], value)
        if before.get("annotations") is None and restored.get("annotations") == {} and "annotations" not in before:
            del restored["annotations"]
        return restored
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [undo_rewrite(b, a) for b, a in zip(before, after, strict=True)]
    if isinstance(before, str) and isinstance(after, str) and before != after:
        old_host, old_rest = split_reference(before)
        new_host, new_rest = split_reference(after)
        if old_host is not None and new_host is not None and old_rest == new_rest:
            return before  # an image moved to another host, nothing else
    return after


@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams(), region=st.sampled_from(["eastus", "westus"]))
def test_plan_on_any_stream_exits_cleanly_and_keeps_what_it_does_not_rewrite(stream: str, region: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["plan", "--policy", POLICY_FILE, "--active-region", region, "-"], io.StringIO(stream), out, err)
    assert code in (0, 1, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code != 0 and not out.getvalue():
        assert err.getvalue().count("\n") >= 1  # said why, on stderr
        return
    output = out.getvalue()
    for read in (_pyyaml, _ruamel, _kubectl):
        before, after = read(stream), read(output)
        if before is None:
            continue  # this reader cannot read the input: nothing to compare with it
        assert after is not None, f"{read.__name__} reads the input but not the output:\n{output}"
        assert len(before) == len(after), read.__name__
        for b, a in zip(before, after, strict=True):
            assert canonical(undo_rewrite(b, copy.deepcopy(a))) == canonical(b), (read.__name__, b, a)
