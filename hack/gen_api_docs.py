"""Generate docs/api.md, the RegistryPolicy CRD reference, from deploy/crds/registrypolicies.geopin.io.yaml.

Every field, type, default, constraint, description and CEL rule comes from the CRD's openAPIV3Schema; only
the workload annotations table is static text (the annotations are not part of the schema). The output is
deterministic: properties keep the CRD's order and nothing depends on the time or the machine.

    python hack/gen_api_docs.py            # write docs/api.md
    python hack/gen_api_docs.py --check    # exit 1 with one line on stderr when docs/api.md is out of date

tests/unit/test_docs_api.py runs the check, so CI fails when the CRD and docs/api.md drift apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "deploy" / "crds" / "registrypolicies.geopin.io.yaml"
DOC_PATH = ROOT / "docs" / "api.md"
VERSION = "v1alpha1"
# The top-level properties documented as sections, in this order (apiVersion, kind, metadata are standard).
ROOTS = ("spec", "status")

# Copied from the design's "Workload annotations" section: annotations are a contract the schema cannot express.
ANNOTATION_ROWS = (
    ('`geopin.io/skip: "true"`', "workload or Pod", "never touch this object"),
    ("`geopin.io/region: westus`", "workload", "preferred region for this workload (must be a listed replica)"),
    (
        "`geopin.io/original-images`",
        "workload or Pod, written by geopin",
        "JSON object: container path → original image; the source of every restore",
    ),
    (
        "`geopin.io/pinned-region`",
        "workload or Pod, written by geopin",
        "the region (or `global`) the images now point to",
    ),
    (
        "`geopin.io/pinned-endpoints`",
        "workload or Pod, written by geopin",
        "JSON object: registry → the explicit endpoint (`spec.replicas[].endpoint`) its images now point to,"
        " only for an endpoint that is not the registry's `<name>.<region>.geo` host; recognises geopin's"
        " own rewrite after that endpoint is changed or removed from the policy",
    ),
)
ANNOTATIONS_INTRO = "Annotations on workloads and Pods (prefix `geopin.io/`). They are not part of the CRD schema."
ANNOTATIONS_OUTRO = (
    "Objects that geopin does not rewrite get no annotation, finalizer or other write from it.",
    "Deleting a policy (or opting a workload out) restores the original images exactly.",
)


def _annotations() -> list[str]:
    rows = [f"| {name} | {on} | {meaning} |" for name, on, meaning in ANNOTATION_ROWS]
    header = ["## Workload annotations", "", ANNOTATIONS_INTRO, "", "| name | on | meaning |", "|---|---|---|"]
    return [*header, *rows, "", *ANNOTATIONS_OUTRO, ""]


class CrdError(Exception):
    """The CRD does not have the shape this generator documents."""


@dataclass
class Section:
    """One object of the schema: a heading, its description and a table of its properties."""

    paths: list[str]
    schema: dict[str, Any]
    descriptions: dict[str, str] = field(default_factory=dict)


def _text(value: object) -> str:
    """Schema text for a Markdown table cell or list item: one line, no raw HTML, no cell breaks."""
    folded = " ".join(str(value).split())
    return folded.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _code(value: object, *, in_table: bool = True) -> str:
    """An inline code span; in a table cell its pipes are escaped (GFM unescapes them inside code spans too)."""
    text = str(value).replace("|", "\\|") if in_table else str(value)
    if text == "":
        return '`""`'
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def _anchor(path: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in path.lower()).strip("-").replace("--", "-")


def _literal(value: object) -> str:
    return _code(value if isinstance(value, str) and value != "" else json.dumps(value, sort_keys=True))


def _is_table(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" and bool(schema.get("properties"))


def _type(schema: dict[str, Any], child_path: str, titles: dict[str, str]) -> str:
    kind = str(schema.get("type", "any"))
    if kind == "array":
        items = schema.get("items") or {}
        item_path = child_path + "[]"
        if _is_table(items):
            return f"[[]object](#{_anchor(titles[item_path])})"
        return "[]" + _type(items, item_path, titles)
    if kind == "object":
        if _is_table(schema):
            return f"[object](#{_anchor(titles[child_path])})"
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return "map[string]" + _type(extra, child_path + "{}", titles)
        return "object"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(name: str, schema: dict[str, Any], required: Sequence[str]) -> str:
    parts: list[str] = []
    if name in required:
        parts.append("**required**")
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    if "pattern" in schema:
        parts.append("pattern " + _code(schema["pattern"]))
    for key, label in (
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(_code(k) for k in schema.get("x-kubernetes-list-map-keys", []))
        parts.append(f"unique by {keys}")
    elif schema.get("x-kubernetes-list-type") == "set":
        parts.append("unique items")
    if schema.get("x-kubernetes-map-type") == "atomic":
        parts.append("replaced as a whole")
    return "; ".join(parts)


def _collect(path: str, schema: dict[str, Any], out: list[tuple[str, dict[str, Any]]]) -> None:
    """Every object with properties under schema, depth-first in the CRD's order."""
    if schema.get("type") == "array":
        _collect(path + "[]", schema.get("items") or {}, out)
        return
    if not _is_table(schema):
        return
    out.append((path, schema))
    for name, child in schema["properties"].items():
        _collect(f"{path}.{name}", child, out)


def _canonical(schema: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in schema.items() if k != "description"}, sort_keys=True)


def _sections(root: dict[str, Any]) -> list[Section]:
    """One section per object; objects with the same schema (the two label selectors) share one."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name in ROOTS:
        if name not in root.get("properties", {}):
            raise CrdError(f"openAPIV3Schema has no {name!r} property")
        _collect(name, root["properties"][name], found)
    sections: list[Section] = []
    by_shape: dict[str, Section] = {}
    for path, schema in found:
        key = _canonical(schema)
        section = by_shape.get(key)
        if section is None:
            section = by_shape[key] = Section([], schema)
            sections.append(section)
        section.paths.append(path)
        section.descriptions[path] = str(schema.get("description", ""))
    return sections


def _rules(schema: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        where = f" on {_code(rule['fieldPath'])}" if "fieldPath" in rule else ""
        reason = f", reason {_code(rule['reason'])}" if "reason" in rule else ""
        lines.append(f"- {_text(rule.get('message', ''))} (error{where}{reason})")
        lines.append(f"  - rule: {_code(' '.join(str(rule['rule']).split()), in_table=False)}")
    return lines


def _render_section(section: Section, titles: dict[str, str]) -> list[str]:
    title = titles[section.paths[0]]
    lines = [f'<a id="{_anchor(title)}"></a>', "", f"### {', '.join(_code(p) for p in section.paths)}", ""]
    texts = list(dict.fromkeys(section.descriptions.values()))
    if len(texts) == 1:
        if texts[0]:
            lines += [_text(texts[0]), ""]
    else:
        lines += [f"- {_code(p)}: {_text(d)}" for p, d in section.descriptions.items()] + [""]
    schema = section.schema
    required = schema.get("required", [])
    lines += ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name, child in schema["properties"].items():
        child_path = f"{section.paths[0]}.{name}"
        default = _literal(child["default"]) if "default" in child else ""
        lines.append(
            f"| {_code(name)} | {_type(child, child_path, titles)} | {default} | "
            f"{_constraints(name, child, required)} | {_text(child.get('description', ''))} |"
        )
    rules = _rules(schema)
    if rules:
        lines += ["", "Validation rules (CEL, checked by the API server):", "", *rules]
    return [*lines, ""]


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    for version in crd["spec"]["versions"]:
        if version["name"] == VERSION:
            return dict(version)
    raise CrdError(f"the CRD has no version {VERSION}")


def render(crd: dict[str, Any], source: str = "deploy/crds/registrypolicies.geopin.io.yaml") -> str:
    """docs/api.md for the CRD document."""
    spec, version = crd["spec"], _version(crd)
    names, root = spec["names"], version["schema"]["openAPIV3Schema"]
    sections = _sections(root)
    # Every object path points at its section, named by the section's first path.
    titles = {path: section.paths[0] for section in sections for path in section.paths}
    scope = "cluster-scoped" if spec["scope"] == "Cluster" else "namespaced"
    subresources = ", ".join(sorted(version.get("subresources", {}))) or "none"
    lines = [
        f"<!-- Generated by hack/gen_api_docs.py from {source}. Do not edit: change the CRD, then run",
        "     `python hack/gen_api_docs.py` (tests/unit/test_docs_api.py fails when this file is stale). -->",
        "",
        f"# {names['kind']} API reference",
        "",
        _text(root.get("description", "")),
        "",
        "| | |",
        "|---|---|",
        f"| group | {_code(spec['group'])} |",
        f"| version | {_code(version['name'])} (served: {str(version.get('served')).lower()}, "
        f"storage: {str(version.get('storage')).lower()}) |",
        f"| kind | {_code(names['kind'])} (list: {_code(names.get('listKind', names['kind'] + 'List'))}) |",
        f"| scope | {scope} |",
        f"| plural / singular | {_code(names['plural'])} / {_code(names.get('singular', ''))} |",
        f"| short names | {', '.join(_code(n) for n in names.get('shortNames', [])) or 'none'} |",
        f"| categories | {', '.join(_code(n) for n in names.get('categories', [])) or 'none'} |",
        f"| subresources | {subresources} |",
        "",
        "## Printer columns",
        "",
        f"`kubectl get {names.get('shortNames', [names['plural']])[0]}` shows:",
        "",
        "| column | type | JSONPath | description |",
        "|---|---|---|---|",
    ]
    for column in version.get("additionalPrinterColumns", []):
        lines.append(
            f"| {_text(column['name'])} | {column['type']} | {_code(column['jsonPath'])} | "
            f"{_text(column.get('description', ''))} |"
        )
    lines += [
        "",
        "## Fields",
        "",
        "Each table lists an object's fields in schema order. A field whose type links to another table is an",
        "object (or a list of objects) described there. Validation rules are the CRD's CEL rules",
        "(`x-kubernetes-validations`), with the message the API server returns when one fails.",
        "",
    ]
    for section in sections:
        lines += _render_section(section, titles)
    lines += _annotations()
    return "\n".join(lines).rstrip("\n") + "\n"


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        document = yaml.safe_load(f)
    if not isinstance(document, dict):
        raise CrdError(f"{path}: not a YAML mapping")
    return document


def generate(crd_path: Path = CRD_PATH) -> str:
    return render(load_crd(crd_path))


def check(doc_path: Path = DOC_PATH, crd_path: Path = CRD_PATH) -> str | None:
    """None when doc_path holds exactly what the CRD generates, else a one-line explanation."""
    try:
        current = doc_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current == generate(crd_path):
        return None
    state = "is missing" if current is None else "is out of date"
    return f"{_display(doc_path)} {state}: run `python hack/gen_api_docs.py` and commit the result"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/api.md from the RegistryPolicy CRD.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs instead of writing it")
    parser.add_argument("--crd", type=Path, default=CRD_PATH, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=DOC_PATH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        problem = check(args.output, args.crd)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        return 0
    args.output.write_text(generate(args.crd), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
