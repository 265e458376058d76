"""Manifests for ``geopin plan``: read as kubectl reads them, written back with every untouched value as it was.

Two views of each YAML document:

- the *round-trip* tree (ruamel.yaml, YAML 1.2 syntax), which is what gets patched and printed. Every
  plain scalar is kept as its source text (:class:`PlainScalar`) and printed as that text again, so a
  value geopin does not rewrite means the same to every reader afterwards as before: ``12:30``,
  ``0777``, ``yes``, ``2001-12-14t21:59:43.10-05:00`` or ``+12`` are never re-read and re-written.
  Quoted scalars keep their quotes, comments and key order stay;
- the *kubectl* view: plain Python values with plain scalars typed as kubectl types them
  (:func:`kubectl_scalar`), which is what geopin decides on.

Strings geopin adds (its annotations, a rewritten image whose original was quoted) are written plain
only when every reader (YAML 1.1, YAML 1.2, kubectl) reads them back as that string, else quoted.
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass
from typing import Any, TextIO

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tag import Tag

__all__ = ["Document", "ManifestError", "PlainScalar", "dump", "kubectl_scalar", "load"]

_PLAIN_TAG = "tag:geopin.io,2026:plain"
_STR_TAG = "tag:yaml.org,2002:str"
# Anchors, aliases and nesting deeper than this are refused rather than expanded without end.
MAX_DEPTH = 100


class ManifestError(ValueError):
    """The text is not YAML geopin can read; the message is one line."""


class PlainScalar(str):
    """A plain (unquoted) scalar as its source text; printed as that text again."""

    __slots__ = ()


class TaggedText(str):
    """A scalar with an explicit type tag (``!!float '1e-55'``) as its source text, tag and quoting."""

    tag: str
    style: str | None


# The tags whose values ruamel.yaml would construct and print in its own format.
_TYPE_TAGS = tuple(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp"))


@dataclass(frozen=True, slots=True)
class Document:
    tree: Any  # the round-trip tree: what is patched and printed
    value: Any  # what kubectl reads: what geopin decides on


# -- kubectl's reading of a plain scalar ------------------------------------------------------------

# sigs.k8s.io/yaml (kubectl, the API machinery) reads YAML with its fork of go-yaml v2; its
# goyaml.v2/resolve.go types a plain scalar by this table, then as an int (strconv.ParseInt base 0
# after removing "_": 0x, 0o, 0b and a leading-zero octal included), then as a float. Timestamps
# stay strings when decoded into interface{}. Sexagesimal numbers (12:30) are not supported: strings.
_RESOLVE_MAP: dict[str, Any] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")


def kubectl_scalar(text: str) -> Any:
    """The value kubectl gives a plain scalar: bool, None, int, float or the text itself."""
    if text in _RESOLVE_MAP:
        return _RESOLVE_MAP[text]
    first = text[:1]
    if first == ".":
        return float(text) if _GO_FLOAT.fullmatch(text) else text
    if not first or first not in "+-0123456789":
        return text
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain):
        sign, digits = (-1, plain[1:]) if plain[0] == "-" else (1, plain.lstrip("+"))
        if len(digits) > 1 and digits[0] == "0" and digits[1] in "01234567":
            return sign * int(digits, 8)  # Go's leading-zero octal
        return sign * int(digits, 0)
    if _GO_FLOAT.fullmatch(plain):
        return float(plain)
    return text


# -- reading ----------------------------------------------------------------------------------------


class _KeepPlainText(VersionedResolver):
    """Every plain scalar resolves to one tag whose constructor keeps the text."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return Tag(suffix=_PLAIN_TAG)
        return super().resolve(kind, value, implicit)


class _Constructor(RoundTripConstructor):
    pass


def _construct_plain(constructor: Any, node: Any) -> PlainScalar:
    return PlainScalar(node.value)


def _construct_tagged(constructor: Any, node: Any) -> Any:
    implicit_string = node.ctag.handle is None and node.style is not None and str(node.tag) == _STR_TAG
    if implicit_string:  # a quoted scalar: ruamel.yaml keeps its quotes
        return constructor.construct_yaml_str(node)
    text = TaggedText(node.value)
    text.tag, text.style = str(node.tag), node.style or None
    return text


_Constructor.add_constructor(_PLAIN_TAG, _construct_plain)
for _tag in _TYPE_TAGS:
    _Constructor.add_constructor(_tag, _construct_tagged)


def _reader() -> YAML:
    reader = YAML(typ="rt")
    reader.version = (1, 2)
    reader.Resolver = _KeepPlainText
    reader.Constructor = _Constructor
    reader.preserve_quotes = True
    return reader


def kubectl_value(tree: Any, depth: int = 0) -> Any:
    """The round-trip tree as kubectl reads it (plain scalars typed, merge keys applied, aliases expanded)."""
    if depth > MAX_DEPTH:
        raise ManifestError(f"nested deeper than {MAX_DEPTH} levels (or a recursive alias)")
    if isinstance(tree, PlainScalar):
        return kubectl_scalar(str(tree))
    if isinstance(tree, TaggedText):
        return str(tree) if tree.tag.endswith((":str", ":timestamp")) else kubectl_scalar(str(tree))
    if isinstance(tree, TaggedScalar):  # a tag of another vocabulary (!Ref): its text
        return str(tree.value)
    if isinstance(tree, dict):
        result: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key, item in tree.items():
            value = kubectl_value(item, depth + 1)
            if isinstance(key, PlainScalar) and key == "<<":
                for source in value if isinstance(value, list) else [value]:
                    if isinstance(source, dict):
                        merged = {**source, **merged}
                continue
            result[_hashable(kubectl_value(key, depth + 1))] = value
        return {**merged, **result}
    if isinstance(tree, list):
        return [kubectl_value(item, depth + 1) for item in tree]
    if isinstance(tree, str):
        return str(tree)
    return tree


def _hashable(key: Any) -> Any:
    return key if isinstance(key, str | int | float | bool | type(None)) else repr(key)


def load(text: str) -> list[Document]:
    """Every non-empty document of a YAML stream, or :class:`ManifestError` (one line) if it is not YAML."""
    try:
        trees = list(_reader().load_all(text))
    except YAMLError as e:
        raise ManifestError(_one_line(e)) from None
    except RecursionError:
        raise ManifestError(f"nested deeper than {MAX_DEPTH} levels") from None
    return [Document(tree, kubectl_value(tree)) for tree in trees if tree is not None]


def _one_line(error: Exception) -> str:
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split()) or type(error).__name__


# -- writing ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _read_as_string_everywhere(text: str) -> bool:
    """Would YAML 1.1, YAML 1.2 and kubectl all read this plain text back as this very string?"""
    if kubectl_scalar(text) != text or not isinstance(kubectl_scalar(text), str):
        return False
    try:
        return bool(pyyaml.safe_load(text) == text and YAML(typ="safe", pure=True).load(text) == text)
    except (pyyaml.YAMLError, YAMLError):
        return False


class _Representer(RoundTripRepresenter):
    pass


def _represent_plain(representer: Any, data: PlainScalar) -> Any:
    return representer.represent_scalar(_STR_TAG, str(data), style=None)


def _represent_tagged(representer: Any, data: TaggedText) -> Any:
    style = data.style
    if data.tag == _STR_TAG and style is None and not _read_as_string_everywhere(str(data)):
        style = "'"  # on output every plain scalar counts as a string, so a !!str tag would be dropped
    return representer.represent_scalar(data.tag, str(data), style=style)


def _represent_str(representer: Any, data: str) -> Any:
    style = None if _read_as_string_everywhere(data) else "'"
    return representer.represent_scalar(_STR_TAG, data, style=style)


_Representer.add_representer(PlainScalar, _represent_plain)
_Representer.add_representer(TaggedText, _represent_tagged)
_Representer.add_representer(str, _represent_str)


class _EveryPlainScalarIsAString(VersionedResolver):
    """On output, a string may be written plain (the representer quotes the ambiguous ones)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            return Tag(suffix=_STR_TAG)
        return super().resolve(kind, value, implicit)


def _writer() -> YAML:
    writer = YAML(typ="rt")
    writer.Resolver = _EveryPlainScalarIsAString
    writer.Representer = _Representer
    writer.width = 1 << 20  # never fold a long line: folding is where readers disagree
    writer.indent(mapping=2, sequence=4, offset=2)
    writer.explicit_start = True
    return writer


def dump(trees: list[Any], stream: TextIO) -> None:
    """Print round-trip trees as one multi-document stream."""
    for tree in trees:
        _spell_empty_keys(tree)
    buffer = io.StringIO()
    _writer().dump_all(trees, buffer)
    stream.write(buffer.getvalue())


def _spell_empty_keys(tree: Any, depth: int = 0) -> None:
    """An empty plain key (a null key, ``: value``) cannot be printed empty again: ``~`` is null to every
    reader, as it was. (An empty plain *value* prints as it was.)"""
    if depth > MAX_DEPTH:
        return
    if isinstance(tree, dict):
        if any(type(key) is PlainScalar and key == "" for key in tree):
            items = list(tree.items())
            tree.clear()
            for key, value in items:
                tree[PlainScalar("~") if type(key) is PlainScalar and key == "" else key] = value
        for value in tree.values():
            _spell_empty_keys(value, depth + 1)
    elif isinstance(tree, list):
        for item in tree:
            _spell_empty_keys(item, depth + 1)
