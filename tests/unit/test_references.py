"""OCI image references: the distribution/reference grammar, parsed and formatted without losing a byte."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from geopin.core.references import (
    NAME_TOTAL_LENGTH_MAX,
    InvalidReference,
    Reference,
    parse,
    same_host,
    split_host,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


# --------------------------------------------------------------------------- valid references

VALID: list[tuple[str, Reference]] = [
    # Docker Hub short names: no host, nothing normalised.
    ("nginx", Reference(None, "nginx")),
    ("nginx:1.27", Reference(None, "nginx", "1.27")),
    ("library/nginx", Reference(None, "library/nginx")),
    ("library/nginx:latest", Reference(None, "library/nginx", "latest")),
    ("contoso/app:1", Reference(None, "contoso/app", "1")),
    ("a/b/c/d", Reference(None, "a/b/c/d")),
    ("nginx@" + SHA256, Reference(None, "nginx", None, SHA256)),
    # A dotted single component without a slash is a path, not a host.
    ("foo.bar", Reference(None, "foo.bar")),
    ("foo.bar:1", Reference(None, "foo.bar", "1")),
    # localhost:5000 without a slash is name + tag, exactly as Docker parses it.
    ("localhost:5000", Reference(None, "localhost", "5000")),
    ("localhost", Reference(None, "localhost")),
    # Hosts: a dot, a colon (port), localhost, or an upper-case letter in the first component.
    ("docker.io/library/nginx", Reference("docker.io", "library/nginx")),
    ("contoso.azurecr.io/app:1", Reference("contoso.azurecr.io", "app", "1")),
    ("contoso.azurecr.io/team/app:1", Reference("contoso.azurecr.io", "team/app", "1")),
    ("Contoso.AzureCR.io/app", Reference("Contoso.AzureCR.io", "app")),
    ("localhost/app", Reference("localhost", "app")),
    ("localhost:5000/app", Reference("localhost:5000", "app")),
    ("localhost:5000/app:5000", Reference("localhost:5000", "app", "5000")),
    ("registry:5000/app", Reference("registry:5000", "app")),
    ("FOO/bar", Reference("FOO", "bar")),
    ("127.0.0.1:5000/app:1", Reference("127.0.0.1:5000", "app", "1")),
    ("my-registry.example.com/a/b:c", Reference("my-registry.example.com", "a/b", "c")),
    ("a.b/c", Reference("a.b", "c")),
    # IPv6 literals in brackets, with and without port.
    ("[::1]/app", Reference("[::1]", "app")),
    ("[::1]:5000/app", Reference("[::1]:5000", "app")),
    ("[::1]:5000/app:1.0", Reference("[::1]:5000", "app", "1.0")),
    ("[2001:db8::1]:443/team/app@" + SHA256, Reference("[2001:db8::1]:443", "team/app", None, SHA256)),
    ("[FE80::1]/app", Reference("[FE80::1]", "app")),
    # Separators: '.', '_', '__', and any run of '-'.
    ("a_b", Reference(None, "a_b")),
    ("a__b", Reference(None, "a__b")),
    ("a.b.c", Reference(None, "a.b.c")),
    ("a-b", Reference(None, "a-b")),
    ("a---b", Reference(None, "a---b")),
    ("a-b_c.d__e---f", Reference(None, "a-b_c.d__e---f")),
    ("example.com/a__b/c---d", Reference("example.com", "a__b/c---d")),
    # Tags.
    ("app:v1.2.3-rc_1", Reference(None, "app", "v1.2.3-rc_1")),
    ("app:_x", Reference(None, "app", "_x")),
    ("app:LATEST", Reference(None, "app", "LATEST")),
    ("app:" + "t" * 128, Reference(None, "app", "t" * 128)),
    # Digests: the algorithms go-digest v1.0.0 registers, each with its exact lower-case hex length.
    ("example.com/app@" + SHA256, Reference("example.com", "app", None, SHA256)),
    ("example.com/app@" + SHA512, Reference("example.com", "app", None, SHA512)),
    ("example.com/app:1@" + SHA256, Reference("example.com", "app", "1", SHA256)),
    ("localhost:5000/app:1@" + SHA256, Reference("localhost:5000", "app", "1", SHA256)),
    ("app@sha384:" + "a" * 96, Reference(None, "app", None, "sha384:" + "a" * 96)),
    # The 255-character limit is on the repository path alone, as distribution/reference v0.6.0 counts it.
    ("a" * NAME_TOTAL_LENGTH_MAX, Reference(None, "a" * NAME_TOTAL_LENGTH_MAX)),
    (
        "example.com/" + "a" * NAME_TOTAL_LENGTH_MAX + ":tag@" + SHA256,
        Reference("example.com", "a" * NAME_TOTAL_LENGTH_MAX, "tag", SHA256),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[v[0][:60] for v in VALID])
def test_parse_valid(text: str, expected: Reference) -> None:
    ref = parse(text)
    assert ref == expected
    assert str(ref) == text


# --------------------------------------------------------------------------- invalid references

INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    (" nginx", "white space"),
    ("nginx ", "white space"),
    ("nginx\n", "white space"),
    ("\tnginx", "white space"),
    ("Nginx", "lower-case"),
    ("library/Nginx", "lower-case"),
    ("example.com/Foo/bar:1", "lower-case"),
    ("contoso.azurecr.io/App", "lower-case"),
    ("nginx:", "tag"),
    ("nginx:-x", "tag"),
    ("nginx:.x", "tag"),
    ("nginx:a/b", "host"),
    ("nginx:" + "t" * 129, "tag"),
    ("nginx:tág", "tag"),
    ("nginx:a b", "tag"),
    ("nginx@", "digest"),
    ("nginx@sha256:", "digest"),
    ("nginx@sha256:" + "a" * 63, "sha256"),
    ("nginx@sha256:" + "a" * 65, "sha256"),
    ("nginx@sha256:" + "A" * 64, "sha256"),
    ("nginx@sha256:" + "0123456789ABCDEF" * 4, "sha256"),
    ("nginx@sha512:" + "a" * 64, "sha512"),
    ("nginx@sha512:" + "a" * 127, "sha512"),
    ("nginx@sha384:" + "a" * 64, "sha384"),
    ("nginx@md5:" + "a" * 31, "digest"),
    ("nginx@sha256:" + "g" * 64, "digest"),
    ("nginx@256:" + "a" * 64, "digest"),
    ("nginx@" + SHA256 + "@" + SHA256, "digest"),
    ("nginx@:" + "a" * 64, "digest"),
    ("nginx@sha256" + "a" * 64, "digest"),
    ("a" * (NAME_TOTAL_LENGTH_MAX + 1), "255"),
    ("example.com/" + "a" * (NAME_TOTAL_LENGTH_MAX + 1) + ":1", "255"),
    ("a___b", "path"),
    ("a_-b", "path"),
    ("a..b", "path"),
    ("a._b", "path"),
    ("-a", "path"),
    ("a-", "path"),
    ("_a", "path"),
    ("a.", "path"),
    ("a//b", "path"),
    ("example.com/", "path"),
    ("example.com//app", "path"),
    ("/app", "path"),
    ("app/", "path"),
    ("foo:bar:baz", "path"),
    ("fóo", "path"),
    ("example.com/a b", "path"),
    ("-example.com/app", "host"),
    ("example-.com/app", "host"),
    ("example..com/app", "host"),
    ("example.com:port/app", "host"),
    ("example.com:/app", "host"),
    ("exa_mple.com/app", "host"),
    ("[::1/app", "host"),
    ("[fe80::1%eth0]:5000/app", "host"),
    ("[::1]", "tag"),
    ("http://example.com/app", "host"),
    # A newline inside the reference must not slip through an end-of-line anchor.
    ("nginx:latest\n@" + SHA256, "tag"),
    ("example.com\n/app", "host"),
    ("nginx\n:latest", "path"),
    ("nginx@blake3:" + "a" * 32 + "\n@x", "digest"),
    # Unregistered algorithms (go-digest answers ErrDigestUnsupported), and registered ones spelled otherwise.
    ("nginx@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("nginx@sha1:" + "a" * 40, "unsupported digest algorithm"),
    ("nginx@blake3:" + "a" * 64, "unsupported digest algorithm"),
    ("nginx@multihash+base58:" + "0" * 40, "unsupported digest algorithm"),
    ("nginx@SHA256:" + "a" * 64, "unsupported digest algorithm"),
    ("nginx@Sha512:" + "a" * 128, "unsupported digest algorithm"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[repr(v[0])[:60] for v in INVALID])
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    assert info.value.reference == text
    assert reason in info.value.reason
    assert repr(text) in str(info.value)


def test_invalid_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid image reference"):
        parse("UPPER")


def test_upper_case_repository_reason_is_specific() -> None:
    with pytest.raises(InvalidReference) as info:
        parse("example.com/App:1")
    assert info.value.reason == "repository name must be lower-case"


def test_parse_is_cached_but_results_are_immutable() -> None:
    first = parse("example.com/app:1")
    assert parse("example.com/app:1") is first
    with pytest.raises(AttributeError):
        first.host = "evil.com"  # type: ignore[misc]
    assert parse("example.com/app:1").host == "example.com"


# --------------------------------------------------------------------------- with_host / with_digest


@pytest.mark.parametrize(
    ("text", "host", "expected"),
    [
        ("contoso.azurecr.io/app:1", "contoso.westus.geo.azurecr.io", "contoso.westus.geo.azurecr.io/app:1"),
        ("contoso.azurecr.io/a/b@" + SHA256, "localhost:5001", "localhost:5001/a/b@" + SHA256),
        ("nginx", "mirror.example.com", "mirror.example.com/nginx"),
        ("library/nginx:1", "[::1]:5000", "[::1]:5000/library/nginx:1"),
        ("localhost:5000/app:1@" + SHA256, "Example.COM", "Example.COM/app:1@" + SHA256),
    ],
)
def test_with_host(text: str, host: str, expected: str) -> None:
    ref = parse(text)
    moved = ref.with_host(host)
    assert str(moved) == expected
    assert (moved.path, moved.tag, moved.digest) == (ref.path, ref.tag, ref.digest)
    assert parse(expected) == moved
    assert str(ref) == text  # the original is untouched


@pytest.mark.parametrize(
    "host",
    ["", "example.com/", "example.com/app", "https://example.com", "ex ample.com", "-x.com", "x.com:", "x.com\n"],
)
def test_with_host_rejects_non_hosts(host: str) -> None:
    with pytest.raises(InvalidReference):
        parse("example.com/app").with_host(host)


def test_with_digest() -> None:
    ref = parse("example.com/app:1")
    assert str(ref.with_digest(SHA256)) == "example.com/app:1@" + SHA256
    assert ref.digest is None
    for bad in ("sha256:" + "a" * 63, "sha256:" + "A" * 64, "nope", "", "blake3:" + "a" * 32 + "\n"):
        with pytest.raises(InvalidReference):
            ref.with_digest(bad)


# --------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("contoso.azurecr.io", ("contoso.azurecr.io", None)),
        ("Contoso.AzureCR.io:443", ("contoso.azurecr.io", "443")),
        ("localhost:5000", ("localhost", "5000")),
        ("[::1]", ("[::1]", None)),
        ("[FE80::1]:5000", ("[fe80::1]", "5000")),
    ],
)
def test_split_host(host: str, expected: tuple[str, str | None]) -> None:
    assert split_host(host) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("contoso.azurecr.io", "contoso.azurecr.io", True),
        ("contoso.azurecr.io", "CONTOSO.AZURECR.IO", True),
        ("Contoso.azurecr.io:5000", "contoso.AZURECR.io:5000", True),
        ("contoso.azurecr.io", "contoso.azurecr.io:443", False),
        ("contoso.azurecr.io:443", "contoso.azurecr.io:5000", False),
        ("contoso.azurecr.io", "contoso.azurecr.io.evil.com", False),
        ("contoso.azurecr.io", "xcontoso.azurecr.io", False),
        ("[::1]:5000", "[::1]:5000", True),
        ("[::1]:5000", "[::1]", False),
        ("[FE80::1]", "[fe80::1]", True),
        ("localhost", "localhost:5000", False),
    ],
)
def test_same_host(a: str, b: str, same: bool) -> None:
    assert same_host(a, b) is same
    assert same_host(b, a) is same


# --------------------------------------------------------------------------- property tests

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = st.text(_LOWER_ALNUM, min_size=1, max_size=6)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(_ALNUM)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(_SEPARATOR), draw(_ALNUM)]
    return "".join(parts)


_PATHS = st.lists(path_components(), min_size=1, max_size=3).map("/".join)

_DOMAIN_COMPONENT = st.one_of(
    st.text(string.ascii_letters + string.digits, min_size=1, max_size=1),
    st.tuples(
        st.text(string.ascii_letters + string.digits, min_size=1, max_size=1),
        st.text(string.ascii_letters + string.digits + "-", max_size=6),
        st.text(string.ascii_letters + string.digits, min_size=1, max_size=1),
    ).map("".join),
)
_PORTS = st.integers(0, 65535).map(str)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    """A host[:port] that Docker recognises as a registry (dot, port, localhost or upper case)."""
    kind = draw(st.sampled_from(["dotted", "port", "localhost", "ipv6", "upper"]))
    port = draw(st.none() | _PORTS)
    if kind == "dotted":
        name = ".".join(draw(st.lists(_DOMAIN_COMPONENT, min_size=2, max_size=4)))
    elif kind == "port":
        name = draw(_DOMAIN_COMPONENT)
        port = draw(_PORTS)
    elif kind == "localhost":
        name = "localhost"
    elif kind == "ipv6":
        groups = draw(st.lists(st.text("0123456789abcdefABCDEF", max_size=4), min_size=2, max_size=8))
        name = "[" + ":".join(groups) + "]"  # an IPv6 literal always has a colon
    else:
        name = draw(_DOMAIN_COMPONENT)
        assume(name != name.lower())
    return name if port is None else f"{name}:{port}"


_TAGS = st.tuples(
    st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=1),
    st.text(string.ascii_letters + string.digits + "_.-", max_size=127),
).map("".join)

_HEX = "0123456789abcdef"
_DIGESTS = st.one_of(
    st.text(_HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.text(_HEX, min_size=128, max_size=128).map(lambda h: "sha512:" + h),
    st.text(_HEX, min_size=96, max_size=96).map(lambda h: "sha384:" + h),
)


@st.composite
def references(draw: st.DrawFn) -> tuple[str, Reference]:
    """A reference string built from the grammar, with the parts it was built from."""
    host = draw(st.none() | hosts())
    path = draw(_PATHS)
    if host is None and "/" in path:
        first = path.split("/", 1)[0]
        assume("." not in first and first != "localhost")
    tag = draw(st.none() | _TAGS)
    digest = draw(st.none() | _DIGESTS)
    name = path if host is None else f"{host}/{path}"
    text = name + ("" if tag is None else f":{tag}") + ("" if digest is None else f"@{digest}")
    return text, Reference(host, path, tag, digest)


@given(references())
def test_parse_format_identity(case: tuple[str, Reference]) -> None:
    text, expected = case
    ref = parse(text)
    assert ref == expected
    assert str(ref) == text
    assert parse(str(ref)) == ref


@given(references(), hosts())
def test_with_host_changes_only_the_host(case: tuple[str, Reference], new_host: str) -> None:
    text, ref = case
    moved = parse(text).with_host(new_host)
    assert moved.host == new_host
    assert (moved.path, moved.tag, moved.digest) == (ref.path, ref.tag, ref.digest)
    rest = text if ref.host is None else text[len(ref.host) + 1 :]
    assert str(moved) == f"{new_host}/{rest}"
    assert parse(str(moved)) == moved  # a host never makes a valid reference invalid


@given(hosts(), st.randoms(use_true_random=False))
def test_same_host_is_case_insensitive(host: str, rnd: random.Random) -> None:
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in host)
    assert same_host(host, mixed)
    assert same_host(mixed, host)
    assert same_host(host, host.upper())


@given(hosts(), _PORTS, _PORTS)
def test_same_host_is_port_sensitive(host: str, port_a: str, port_b: str) -> None:
    name, port = split_host(host)
    bare = host if port is None else host[: -len(port) - 1]
    assert same_host(f"{bare}:{port_a}", f"{bare}:{port_b}") is (port_a == port_b)
    assert not same_host(bare, f"{bare}:{port_a}")
    assert split_host(bare) == (name, None)
