"""OCI image references: the distribution grammar, parsed without losing a byte.

The grammar is the one of github.com/distribution/reference (``reference.go``)::

    reference     := name [ ":" tag ] [ "@" digest ]
    name          := [domain "/"] remote-name
    domain        := host [":" port]
    remote-name   := path-component ["/" path-component]*
    path-component:= [a-z0-9]+ (separator [a-z0-9]+)*      separator := [_.] | __ | -+
    tag           := [\\w][\\w.-]{0,127}
    digest        := algorithm ":" hex        (registered algorithms only, see below)

As in Docker, the first component is a registry host only when it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the reference is a Docker Hub short name
(``nginx``, ``library/nginx``) and has no host. Nothing is normalised: ``format(parse(s)) == s``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

__all__ = [
    "InvalidReference",
    "Reference",
    "image_host",
    "name_fits_older_runtimes",
    "parse",
    "same_host",
    "split_host",
    "split_reference",
]

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}\Z")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
# The digest grammar above admits any algorithm, but a digest is valid only for an algorithm that is
# registered, with exactly its lower-case hex length: github.com/opencontainers/go-digest v1.0.0
# (the version containerd and the kubelet use), algorithm.go registers sha256, sha384 and sha512
# with anchored `^[a-f0-9]{64}$`, `{96}`, `{128}`; Digest.Validate answers ErrDigestUnsupported for
# any other algorithm (md5, blake3, an upper-case SHA256) and ErrDigestInvalidFormat for a wrong length.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}

# The repository path (the name without its host) is at most 255 characters. distribution/reference
# v0.6.0, which containerd 2 and the kubelet use, checks `len(repo.path) > RepositoryNameTotalLengthMax`
# in Parse (reference.go, commit aaca75e "Exclude domain from name length check"). Older parsers
# (distribution/reference <= v0.5.0, containerd 1.x's reference/docker) count the host too: see
# ``name_fits_older_runtimes``, which a rewrite must respect because only the host changes.
NAME_TOTAL_LENGTH_MAX = 255


class InvalidReference(ValueError):
    """The string is not an image reference; ``reason`` says which part is wrong."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference. ``host`` is None for Docker Hub short names."""

    host: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        name = self.path if self.host is None else f"{self.host}/{self.path}"
        tag = "" if self.tag is None else f":{self.tag}"
        digest = "" if self.digest is None else f"@{self.digest}"
        return f"{name}{tag}{digest}"

    def with_host(self, host: str) -> Reference:
        """The same reference on another registry host: path, tag and digest are untouched."""
        if not _DOMAIN_RE.match(host):
            raise InvalidReference(host, "not a registry host[:port]")
        return replace(self, host=host)

    def with_digest(self, digest: str) -> Reference:
        _check_digest(str(self), digest)
        return replace(self, digest=digest)


def split_host(host: str) -> tuple[str, str | None]:
    """``"Contoso.azurecr.io:443"`` → ``("contoso.azurecr.io", "443")``: lower-cased name and port."""
    if host.startswith("["):
        end = host.index("]")
        name, rest = host[: end + 1], host[end + 1 :]
        return name.lower(), (rest[1:] if rest.startswith(":") else None)
    name, _, port = host.partition(":")
    return name.lower(), (port or None)


def same_host(a: str, b: str) -> bool:
    """Registry hosts are equal case-insensitively and only with the same (explicit or absent) port."""
    return split_host(a) == split_host(b)


def _check_digest(reference: str, digest: str) -> None:
    if not _DIGEST_RE.match(digest):
        raise InvalidReference(reference, f"invalid digest {digest!r}")
    algorithm, _, hex_value = digest.partition(":")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidReference(reference, f"unsupported digest algorithm {algorithm!r} (sha256, sha384, sha512)")
    if len(hex_value) != expected or hex_value != hex_value.lower():
        raise InvalidReference(reference, f"a {algorithm} digest is {expected} lower-case hex digits")


@functools.lru_cache(maxsize=65536)
def parse(reference: str) -> Reference:
    """Parse an image reference or raise :class:`InvalidReference` saying what is wrong.

    Cached: the operator parses the same few hundred images again on every resync.
    """
    if not reference:
        raise InvalidReference(reference, "empty")
    if reference != reference.strip():
        raise InvalidReference(reference, "leading or trailing white space")

    name, at, digest = reference.partition("@")
    if at:
        _check_digest(reference, digest)

    # A tag is after the last colon that follows the last slash (a colon before it is a port).
    tag: str | None = None
    last_slash = name.rfind("/")
    last_colon = name.rfind(":")
    if last_colon > last_slash:
        name, tag = name[:last_colon], name[last_colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReference(reference, f"invalid tag {tag!r}")

    host, path = split_reference(name)
    if host is not None and not _DOMAIN_RE.match(host):
        raise InvalidReference(reference, f"invalid registry host {host!r}")

    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(reference, f"repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")

    if not _PATH_RE.match(path):
        if path != path.lower():
            raise InvalidReference(reference, "repository name must be lower-case")
        raise InvalidReference(reference, f"invalid repository path {path!r}")

    return Reference(host=host, path=path, tag=tag, digest=digest if at else None)


def split_reference(reference: str) -> tuple[str | None, str]:
    """(registry host, what follows ``host/``) of any string, valid or not, by Docker's rule: the first
    component is a host when it contains ``.`` or ``:``, is ``localhost`` or has an upper-case letter."""
    first, slash, rest = reference.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first != first.lower()):
        return first, rest
    return None, reference


def name_fits_older_runtimes(ref: Reference) -> bool:
    """Is host/path at most 255 characters, as containerd 1.x and distribution/reference <= v0.5.0 require?"""
    name = ref.path if ref.host is None else f"{ref.host}/{ref.path}"
    return len(name) <= NAME_TOTAL_LENGTH_MAX


def image_host(image: str) -> str | None:
    """The registry host an image names, even an invalid one (its first component when that looks
    like a host); None for Docker Hub short names."""
    try:
        return parse(image).host
    except InvalidReference:
        first, slash, _ = image.partition("/")
        return first if slash else None
