"""Which registry hosts a credential key reaches, exactly as the kubelet decides (pure).

A pull secret keyed by ``contoso.azurecr.io`` does **not** authenticate pulls from
``contoso.<region>.geo.azurecr.io``. What was checked (kubernetes/kubernetes ``pkg/credentialprovider``):

- ``keyring.go`` ``BasicDockerKeyring.Add``: a key without ``https://``/``http://`` gets ``https://`` prepended
  and is parsed with Go's ``url.Parse`` (an unparsable key is logged and ignored); a leading ``/v1/`` or
  ``/v2/`` of the path is dropped and a path of ``/`` counts as none; the stored key is ``host + path``.
- ``Lookup`` calls ``URLsMatchStr(key, image)`` for every key, ``image`` being the repository without tag or
  digest (``contoso.azurecr.io/team/app``); a matching error counts as no match. Only when nothing matched,
  credentials stored under ``index.docker.io`` serve images for which ``isDefaultRegistryMatch`` holds.
- ``ParseSchemelessURL`` parses ``"https://" + s``; ``SplitURL`` splits ``url.Host`` with ``net.SplitHostPort``
  (no port → the whole host) and then on ``.``; ``URLsMatch`` requires equal port strings (so a key without a
  port does not match a host with one), the same number of labels, the key's path to be a *string* prefix of the
  image's path (``/team`` also matches ``/teams/app``), and every label to match with ``path/filepath.Match``:
  ``*`` matches within one label only, so ``*.azurecr.io`` does not match ``contoso.eastus.geo.azurecr.io``
  but ``*.*.geo.azurecr.io`` does. Matching is case-sensitive (Go lower-cases nothing here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geopin.core.pullsecrets import DockerAuth
from geopin.core.references import split_host

__all__ = ["covers", "credentials_for", "key_matches", "missing_hosts"]

_DEFAULT_REGISTRY_KEY = "index.docker.io"


# --------------------------------------------------------------------------- Go url.Parse, as far as it matters


@dataclass(frozen=True, slots=True)
class _URL:
    host: str  # unescaped, port included
    path: str  # unescaped


_HEX = frozenset("0123456789abcdefABCDEF")
_HOST_PUNCTUATION = frozenset("-_.~!$&'()*+,;=:[]<>\"")
_USERINFO_PUNCTUATION = frozenset("-._:~!$&'()*+,;=%@")


def _unescape(text: str, *, host: bool) -> str | None:
    """Go ``unescape`` for encodeHost / encodePath: ``%XX`` decoded; in a host only allowed characters."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) < 2 or not set(pair) <= _HEX:
                return None
            if host and int(pair[0], 16) < 8 and pair != "25":
                return None  # RFC 3986: %-encoding in a host only for non-ASCII bytes (and %25)
            out.append(int(pair, 16))
            i += 3
            continue
        if host and char < "\x80" and not (char.isascii() and char.isalnum()) and char not in _HOST_PUNCTUATION:
            return None
        out += char.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all("0" <= c <= "9" for c in port[1:]))


def _go_url(url: str) -> _URL | None:
    """``url.Parse`` of ``https://…`` / ``http://…``; None where Go returns an error."""
    if any(c < " " or c == "\x7f" for c in url):
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("https", "http"):
        return None
    rest = rest.partition("#")[0].partition("?")[0]
    slash = rest.find("/")
    authority, raw_path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo, at, raw_host = authority.rpartition("@")
    if at and not all((c.isascii() and c.isalnum()) or c in _USERINFO_PUNCTUATION for c in userinfo):
        return None
    if raw_host.startswith("["):
        close = raw_host.rfind("]")
        if close < 0 or not _valid_optional_port(raw_host[close + 1 :]):
            return None
    else:
        colon = raw_host.rfind(":")
        if colon >= 0 and not _valid_optional_port(raw_host[colon:]):
            return None
    host = _unescape(raw_host, host=True)
    path = _unescape(raw_path, host=False)
    if host is None or path is None:
        return None
    return _URL(host=host, path=path)


def _split_host_port(hostport: str) -> tuple[str, str]:
    """``SplitURL``: Go's ``net.SplitHostPort``, or the whole host and no port where that fails."""
    last_colon = hostport.rfind(":")
    if last_colon < 0:
        return hostport, ""
    no_open, no_close = 0, 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != last_colon:
            return hostport, ""
        host, no_open, no_close = hostport[1:end], 1, end + 1
    else:
        host = hostport[:last_colon]
        if ":" in host:
            return hostport, ""
    if "[" in hostport[no_open:] or "]" in hostport[no_close:]:
        return hostport, ""
    return host, hostport[last_colon + 1 :]


# --------------------------------------------------------------------------- Go path/filepath.Match (Unix)


class _BadPattern(Exception):
    pass


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    in_range = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif char == "[":
            in_range = True
        elif char == "]":
            in_range = False
        elif char == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _BadPattern
    char, rest = chunk[0], chunk[1:]
    if not rest:
        raise _BadPattern
    return char, rest


def _match_chunk(chunk: str, text: str) -> tuple[str, bool]:
    """Go ``matchChunk``: (rest, ok); keeps checking the pattern's syntax after a mismatch."""
    failed = False
    while chunk:
        if not failed and not text:
            failed = True
        head = chunk[0]
        if head == "[":
            char = ""
            if not failed:
                char, text = text[0], text[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched = False
            ranges = 0
            while True:
                if chunk.startswith("]") and ranges > 0:
                    chunk = chunk[1:]
                    break
                low, chunk = _get_esc(chunk)
                high = low
                if chunk[0] == "-":
                    high, chunk = _get_esc(chunk[1:])
                if char and low <= char <= high:
                    matched = True
                ranges += 1
            if matched == negated:
                failed = True
        elif head == "?":
            if not failed:
                if text[0] == "/":
                    failed = True
                text = text[1:]
            chunk = chunk[1:]
        else:
            if head == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _BadPattern
            if not failed:
                if chunk[0] != text[0]:
                    failed = True
                text = text[1:]
            chunk = chunk[1:]
    return ("", False) if failed else (text, True)


def _glob_match(pattern: str, name: str) -> bool:
    """Go ``filepath.Match`` where an ErrBadPattern counts as no match (the kubelet ignores the error)."""
    try:
        return _glob_match_or_raise(pattern, name)
    except _BadPattern:
        return False


def _glob_match_or_raise(pattern: str, name: str) -> bool:
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name
        rest, ok = _match_chunk(chunk, name)
        if ok and (not rest or pattern):
            name = rest
            continue
        if star:
            advanced = False
            i = 0
            while i < len(name) and name[i] != "/":
                rest, ok = _match_chunk(chunk, name[i + 1 :])
                if ok and not (not pattern and rest):
                    name, advanced = rest, True
                    break
                i += 1
            if advanced:
                continue
        return False  # Go then only checks the rest of the pattern's syntax: an error is no match too
    return not name


# --------------------------------------------------------------------------- the kubelet's matching


def _keyring_key(key: str) -> str | None:
    """``BasicDockerKeyring.Add``: the schemeless ``host[/path]`` the kubelet stores, or None if ignored."""
    value = key if key.startswith(("https://", "http://")) else "https://" + key
    parsed = _go_url(value)
    if parsed is None:
        return None
    path = parsed.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return parsed.host + path if path not in ("", "/") else parsed.host


def _urls_match(glob: str, target: str) -> bool:
    """``URLsMatchStr``: both schemeless; errors count as no match."""
    glob_url, target_url = _go_url("https://" + glob), _go_url("https://" + target)
    if glob_url is None or target_url is None:
        return False
    glob_host, glob_port = _split_host_port(glob_url.host)
    target_host, target_port = _split_host_port(target_url.host)
    if glob_port != target_port:
        return False
    glob_labels, target_labels = glob_host.split("."), target_host.split(".")
    if len(glob_labels) != len(target_labels):
        return False
    if not target_url.path.startswith(glob_url.path):
        return False
    return all(_glob_match(g, t) for g, t in zip(glob_labels, target_labels, strict=True))


def _is_default_registry_match(image: str) -> bool:
    first, slash, _ = image.partition("/")
    if not first:
        return False
    if not slash or first in ("docker.io", "index.docker.io"):
        return True
    return not any(c in first for c in ".:")


def key_matches(key: str, image_host: str, image_path: str = "") -> bool:
    """Would the kubelet use credentials stored under ``key`` (as written in a secret) for this image?

    ``image_host`` is ``host[:port]`` as in the image reference and ``image_path`` its repository path
    without tag or digest (``team/app``), or ``""`` to ask about the host as such (then a key with a path
    does not match). Docker Hub images are ``docker.io`` + ``library/nginx``, as the kubelet normalises them.
    """
    stored = _keyring_key(key)
    if stored is None:
        return False
    target = f"{image_host}/{image_path.lstrip('/')}" if image_path else image_host
    if _urls_match(stored, target):
        return True
    # Lookup's fallback: credentials for index.docker.io serve Docker Hub images when nothing else matched.
    # The kubelet always passes a repository (host/path); judge a bare host as one.
    return stored == _DEFAULT_REGISTRY_KEY and _is_default_registry_match(f"{image_host}/{image_path.lstrip('/')}")


def credentials_for(registry: str, secrets: Iterable[Mapping[str, DockerAuth]]) -> DockerAuth | None:
    """The credentials the kubelet would use for ``registry`` (``host[:port]``), from the first secret that has any."""
    host, _ = split_host(registry)
    for secret in secrets:
        for key, auth in secret.items():
            if key_matches(key, registry) or key_matches(key, host):
                return auth
    return None


def covers(secrets: Iterable[Mapping[str, DockerAuth]], host: str, path: str = "") -> bool:
    """Does any of the parsed pull secrets give the kubelet credentials for ``host`` (and ``path``)?"""
    return any(key_matches(key, host, path) for secret in secrets for key in secret)


def missing_hosts(secrets: Iterable[Mapping[str, DockerAuth]], hosts: Iterable[str]) -> list[str]:
    """The hosts (in the given order, once each) that none of the secrets covers."""
    keys = [key for secret in secrets for key in secret]
    missing: list[str] = []
    for host in hosts:
        if host not in missing and not any(key_matches(key, host) for key in keys):
            missing.append(host)
    return missing
