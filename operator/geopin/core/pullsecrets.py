"""Image pull secrets as the kubelet reads them, and the sibling secret ``pullSecrets: Extend`` writes (pure).

Used by ``spec.pullSecrets`` (``Report`` raises ``PullSecretMissingRegionalHost``, ``Extend`` adds a
geopin-owned sibling secret) and by the probes' credentials; which hosts a key reaches is
``core.keyring``. What was checked (kubernetes/kubernetes ``pkg/credentialprovider``, ``config.go``):
``.dockerconfigjson`` is ``{"auths": {key: entry}}``, ``.dockercfg`` is ``{key: entry}``; an entry's ``auth``
(base64 of ``user:password``, padded or unpadded) overrides ``username``/``password``; Go's
``encoding/json`` matches field names case-insensitively; a malformed entry fails the whole secret.

Secret material never appears in an exception message, its ``args``, its chained exceptions or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from geopin.core.references import InvalidReference, parse, same_host

__all__ = [
    "DOCKERCFG_KEY",
    "DOCKERCONFIGJSON_KEY",
    "SECRET_TYPE_DOCKERCFG",
    "SECRET_TYPE_DOCKERCONFIGJSON",
    "DockerAuth",
    "MalformedPullSecret",
    "parse_dockerconfig",
    "sibling_dockerconfig",
]

DOCKERCONFIGJSON_KEY = ".dockerconfigjson"
DOCKERCFG_KEY = ".dockercfg"
SECRET_TYPE_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
SECRET_TYPE_DOCKERCFG = "kubernetes.io/dockercfg"

_ENTRY_FIELDS = ("username", "password", "email", "auth")


class MalformedPullSecret(ValueError):
    """The Secret is not a readable pull secret. The message names keys and fields, never values."""


@dataclass(frozen=True, slots=True)
class DockerAuth:
    """One registry credential as the kubelet uses it (``auth`` already split into username and password)."""

    username: str = ""
    password: str = field(default="", repr=False)
    email: str = ""


# --------------------------------------------------------------------------- parsing secrets


def parse_dockerconfig(data: Mapping[str, str], secret_type: str | None = None) -> dict[str, DockerAuth]:
    """A pull Secret's ``data`` (base64 values, as the API returns them) → credentials by key, keys as written.

    ``secret_type`` (the Secret's ``type``), when given, selects the data key the kubelet reads for it;
    otherwise ``.dockerconfigjson`` is read if present, else ``.dockercfg``. A document without ``auths``
    (or ``null``) yields no credentials, as in the kubelet. Raises :class:`MalformedPullSecret`.
    """
    if secret_type is None:
        if DOCKERCONFIGJSON_KEY in data:
            key = DOCKERCONFIGJSON_KEY
        elif DOCKERCFG_KEY in data:
            key = DOCKERCFG_KEY
        else:
            found = ", ".join(sorted(repr(_short(str(k))) for k in data)) or "none"
            raise MalformedPullSecret(
                f"not a pull secret: neither {DOCKERCONFIGJSON_KEY} nor {DOCKERCFG_KEY} in data (keys: {found})"
            )
    elif secret_type == SECRET_TYPE_DOCKERCONFIGJSON:
        key = DOCKERCONFIGJSON_KEY
    elif secret_type == SECRET_TYPE_DOCKERCFG:
        key = DOCKERCFG_KEY
    else:
        raise MalformedPullSecret(
            f"secret type {_short(secret_type)!r} is not {SECRET_TYPE_DOCKERCONFIGJSON} or {SECRET_TYPE_DOCKERCFG}"
        )
    if key not in data:
        raise MalformedPullSecret(f"a {secret_type} secret without {key} in data")

    document = _decode_document(key, data[key])
    if key == DOCKERCONFIGJSON_KEY:
        if document is None:
            return {}
        if not isinstance(document, dict):
            raise MalformedPullSecret(f"{key} is not a JSON object")
        auths = _field(document, "auths")
        if auths is None:
            return {}
        if not isinstance(auths, dict):
            raise MalformedPullSecret(f'{key}: "auths" is not a JSON object')
    else:
        if document is None:
            return {}
        if not isinstance(document, dict):
            raise MalformedPullSecret(f"{key} is not a JSON object")
        auths = document
    return {str(registry): _entry(key, str(registry), entry) for registry, entry in auths.items()}


def _decode_document(key: str, value: object) -> Any:
    """base64 → UTF-8 → JSON; every failure is raised outside the ``except`` so no context carries the text."""
    if not isinstance(value, str):
        raise MalformedPullSecret(f"{key} is not a base64 string")
    if not value:
        raise MalformedPullSecret(f"{key} is empty")
    problem: str | None = None
    document: Any = None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        problem = "is not valid base64"
    if problem is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
    if problem is None:
        try:
            document = json.loads(text)
        except ValueError:
            problem = "is not valid JSON"
    if problem is not None:
        raise MalformedPullSecret(f"{key} {problem}")
    return document


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """Go ``encoding/json``: the last key equal to ``name`` case-insensitively wins; ``null`` assigns nothing."""
    value: Any = None
    for key, item in obj.items():
        if key.casefold() == name and item is not None:
            value = item
    return value


def _entry(key: str, registry: str, entry: object) -> DockerAuth:
    where = f"{key}: entry {_short(registry)!r}"
    if entry is None:
        return DockerAuth()
    if not isinstance(entry, dict):
        raise MalformedPullSecret(f"{where} is not a JSON object")
    values: dict[str, str] = {}
    for name in _ENTRY_FIELDS:
        value = _field(entry, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise MalformedPullSecret(f"{where}: field {name!r} is not a string")
        values[name] = value
    username, password = values.get("username", ""), values.get("password", "")
    if values.get("auth"):
        decoded = _decode_auth(values["auth"])
        if decoded is None:
            raise MalformedPullSecret(f"{where}: field 'auth' is not base64 of 'username:password'")
        username, password = decoded
    return DockerAuth(username=username, password=password, email=values.get("email", ""))


def _decode_auth(value: str) -> tuple[str, str] | None:
    """``decodeDockerConfigFieldAuth``: padded → standard base64, unpadded → raw; Go skips CR and LF."""
    text = value.replace("\r", "").replace("\n", "")
    if value.strip().endswith("="):
        if len(text) % 4:
            return None
        padded = text
    else:
        if "=" in text or len(text) % 4 == 1:
            return None
        padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        return None
    username, colon, password = raw.decode("utf-8", "surrogateescape").partition(":")
    return (username, password) if colon else None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- pullSecrets: Extend


def _check_host(host: str) -> None:
    try:
        ok = parse(f"{host}/x").host == host
    except InvalidReference:
        ok = False
    if not ok:
        raise ValueError(f"not a registry host[:port]: {_short(host)!r}")


def sibling_dockerconfig(global_host: str, regional_hosts: Iterable[str], auth: DockerAuth) -> dict[str, str]:
    """``data`` of a geopin-owned ``kubernetes.io/dockerconfigjson`` Secret giving ``auth`` (the credentials
    the workload's secrets hold for ``global_host``) to every regional host.

    Hosts are written as schemeless keys (exactly what the kubelet matches), once each, sorted; a host equal
    to ``global_host`` is left out (the workload's own secret covers it). The output is deterministic, so an
    unchanged result never causes a write. ``ValueError`` for an invalid host or no regional host at all.
    """
    _check_host(global_host)
    hosts: list[str] = []
    for host in regional_hosts:
        _check_host(host)
        if not same_host(host, global_host) and host not in hosts:
            hosts.append(host)
    if not hosts:
        raise ValueError(f"no regional host other than {global_host!r} to extend the pull secret to")
    credentials = f"{auth.username}:{auth.password}".encode("utf-8", "surrogateescape")
    entry: dict[str, str] = {
        "username": auth.username,
        "password": auth.password,
        "auth": base64.b64encode(credentials).decode("ascii"),
    }
    if auth.email:
        entry["email"] = auth.email
    document = {"auths": {host: entry for host in sorted(hosts)}}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8", "surrogateescape")
    return {DOCKERCONFIGJSON_KEY: base64.b64encode(encoded).decode("ascii")}
