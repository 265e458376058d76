"""Pull secrets: parsing, the kubelet's key matching, coverage of regional hosts, the Extend sibling secret."""

from __future__ import annotations

import base64
import fnmatch
import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from geopin.core.keyring import _glob_match, covers, credentials_for, key_matches, missing_hosts
from geopin.core.pullsecrets import (
    DOCKERCFG_KEY,
    DOCKERCONFIGJSON_KEY,
    SECRET_TYPE_DOCKERCFG,
    SECRET_TYPE_DOCKERCONFIGJSON,
    DockerAuth,
    MalformedPullSecret,
    parse_dockerconfig,
    sibling_dockerconfig,
)

GLOBAL = "contoso.azurecr.io"
EASTUS = "contoso.eastus.geo.azurecr.io"
WESTUS = "contoso.westus.geo.azurecr.io"
REGIONAL = [EASTUS, WESTUS]
PASSWORD = "pw-7f3a9c1e5b2d4f60"  # distinctive: must never show up in errors or reprs
USER = "00000000-0000-0000-0000-000000000000"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def auth_field(user: str = USER, password: str = PASSWORD) -> str:
    return b64(f"{user}:{password}")


def dockerconfigjson(auths: Any) -> dict[str, str]:
    return {DOCKERCONFIGJSON_KEY: b64(json.dumps({"auths": auths}))}


def secret_for(*keys: str) -> dict[str, DockerAuth]:
    return parse_dockerconfig(dockerconfigjson({k: {"auth": auth_field()} for k in keys}))


def assert_no_secret(err: BaseException, *secrets: str) -> None:
    texts = [str(err), repr(err), *map(str, err.args)]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert err.__cause__ is None
    assert err.__context__ is None


# --------------------------------------------------------------------------- the registry's own credentials


def test_credentials_for_the_registry_follow_the_kubelet() -> None:
    """The probes' credentials: what the kubelet would use for the global host, from the same parser."""
    secret = parse_dockerconfig(
        dockerconfigjson(
            {
                "https://contoso.azurecr.io/v1/": {"auth": auth_field("global")},
                "*.*.geo.azurecr.io": {"username": "regional", "password": "pw"},
                "127.0.0.1:5000": {"auth": auth_field("local", "pa:ss")},
            }
        )
    )
    assert credentials_for(GLOBAL, [secret]) == DockerAuth("global", PASSWORD)
    assert credentials_for(EASTUS, [secret]) == DockerAuth("regional", "pw")
    assert credentials_for("127.0.0.1:5000", [secret]) == DockerAuth("local", "pa:ss")
    assert credentials_for("127.0.0.1:5001", [secret]) is None  # same host, other port
    assert credentials_for("evil.contoso.azurecr.io", [secret]) is None
    assert credentials_for(GLOBAL, [{}, secret]) == DockerAuth("global", PASSWORD)  # the first secret that has one


# --------------------------------------------------------------------------- the case


def test_three_secrets_global_only_regional_and_double_glob() -> None:
    global_only = secret_for(GLOBAL)
    regional = secret_for(EASTUS, WESTUS)
    double_glob = secret_for("*.*.geo.azurecr.io")

    assert missing_hosts([global_only], REGIONAL) == REGIONAL
    assert not covers([global_only], EASTUS)
    assert covers([global_only], GLOBAL)

    assert missing_hosts([regional], REGIONAL) == []
    assert missing_hosts([double_glob], REGIONAL) == []
    assert not covers([double_glob], GLOBAL)  # 3 labels against 5

    assert missing_hosts([global_only, regional, double_glob], [GLOBAL, *REGIONAL]) == []
    assert missing_hosts([global_only, double_glob], [GLOBAL, *REGIONAL]) == []
    assert missing_hosts([regional, double_glob], [GLOBAL, *REGIONAL]) == [GLOBAL]


def test_single_glob_does_not_cover_regional_hosts() -> None:
    star = secret_for("*.azurecr.io")
    assert covers([star], GLOBAL)
    assert missing_hosts([star], REGIONAL) == REGIONAL


# --------------------------------------------------------------------------- key_matches: hosts and globs


@pytest.mark.parametrize(
    ("key", "host", "expected"),
    [
        (GLOBAL, GLOBAL, True),
        (GLOBAL, EASTUS, False),
        (EASTUS, EASTUS, True),
        (EASTUS, WESTUS, False),
        ("*.azurecr.io", GLOBAL, True),
        ("*.azurecr.io", EASTUS, False),
        ("*.*.geo.azurecr.io", EASTUS, True),
        ("*.*.*.*.*", EASTUS, True),
        ("*.*.*.*", EASTUS, False),
        ("*.*.*.*.*.*", EASTUS, False),
        ("contoso.*.geo.azurecr.io", EASTUS, True),
        ("contoso.*.geo.azurecr.io", "fabrikam.eastus.geo.azurecr.io", False),
        ("*.eastus.geo.azurecr.io", EASTUS, True),
        ("*.eastus.geo.azurecr.io", WESTUS, False),
        ("contoso.*.geo.azurecr.*", EASTUS, True),  # a top-level-domain glob
        ("*.geo.azurecr.io", EASTUS, False),
        ("*", "localhost", True),
        ("*", GLOBAL, False),
        # Globs within a label: partial, '?' is impossible (url.Parse cuts it off as a query), classes.
        ("cont*.eastus.geo.azurecr.io", EASTUS, True),
        ("contoso*.eastus.geo.azurecr.io", EASTUS, True),  # '*' may match nothing
        ("x*.eastus.geo.azurecr.io", EASTUS, False),
        ("contoso.[ew]*.geo.azurecr.io", EASTUS, True),
        ("contoso.[ew]*.geo.azurecr.io", "contoso.northeurope.geo.azurecr.io", False),
        ("c?ntoso.eastus.geo.azurecr.io", EASTUS, False),
        ("contoso.[a-.geo.azurecr.io", EASTUS, False),  # bad pattern: no match, no error
        # Lookalikes never match.
        (GLOBAL, "contoso.azurecr.io.evil.com", False),
        (GLOBAL, "xcontoso.azurecr.io", False),
        ("*.azurecr.io", "contoso.azurecr.io.evil.com", False),
        # Case-sensitive, like the kubelet (Go's url.Parse and filepath.Match lower-case nothing).
        ("Contoso.azurecr.io", GLOBAL, False),
        (GLOBAL, "Contoso.azurecr.io", False),
    ],
)
def test_host_matching(key: str, host: str, expected: bool) -> None:
    assert key_matches(key, host) is expected
    assert key_matches(key, host, "team/app") is expected


@pytest.mark.parametrize("scheme", ["https://", "http://"])
@pytest.mark.parametrize("key", [GLOBAL, EASTUS, "*.*.geo.azurecr.io", "*.azurecr.io"])
def test_scheme_is_ignored(scheme: str, key: str) -> None:
    for host in [GLOBAL, EASTUS]:
        assert key_matches(scheme + key, host) is key_matches(key, host)
        assert key_matches(scheme + key, host, "app") is key_matches(key, host, "app")


def test_other_schemes_are_not_stripped() -> None:
    assert not key_matches("ftp://" + EASTUS, EASTUS)
    assert not key_matches("HTTPS://" + EASTUS, EASTUS)  # the kubelet only strips lower-case schemes


@pytest.mark.parametrize(
    ("key", "host", "expected"),
    [
        (EASTUS + ":443", EASTUS + ":443", True),
        (EASTUS + ":443", EASTUS + ":5000", False),
        (EASTUS + ":443", EASTUS, False),
        # The kubelet compares port strings: a key without port does not match a host with one.
        (EASTUS, EASTUS + ":443", False),
        ("*.*.geo.azurecr.io:5000", EASTUS + ":5000", True),
        ("*.*.geo.azurecr.io", EASTUS + ":5000", False),
        ("https://" + EASTUS + ":5000/", EASTUS + ":5000", True),
        ("localhost:5000", "localhost:5000", True),
        ("127.0.0.1:5000", "127.0.0.1:5000", True),
        ("127.0.0.*:5000", "127.0.0.1:5000", True),
        ("[::1]:5000", "[::1]:5000", True),
        ("[::1]:5000", "[::1]:5001", False),
        # A bracketed address without port: SplitHostPort fails, '[' then starts a glob class. Never matches.
        ("[::1]", "[::1]", False),
        (EASTUS + ":https", EASTUS, False),  # url.Parse: invalid port → the key is ignored
    ],
)
def test_ports(key: str, host: str, expected: bool) -> None:
    assert key_matches(key, host) is expected


@pytest.mark.parametrize(
    ("key", "path", "expected"),
    [
        (EASTUS + "/team", "team/app", True),
        (EASTUS + "/team/app", "team/app", True),
        (EASTUS + "/team/app/", "team/app", False),
        (EASTUS + "/other", "team/app", False),
        (EASTUS + "/team", "teams/app", True),  # a string prefix, as in the kubelet
        (EASTUS + "/team", "", False),  # a path-scoped key does not cover the whole host
        (EASTUS + "/", "team/app", True),  # "/" is no path
        (EASTUS + "/", "", True),
        ("https://" + EASTUS + "/v2/", "team/app", True),  # /v1/ and /v2/ are the registry root
        ("https://" + EASTUS + "/v1/", "", True),
        ("https://" + EASTUS + "/v2/team", "team/app", True),
        ("https://" + EASTUS + "/v2/other", "team/app", False),
        (EASTUS + "/v2", "team/app", False),  # without the trailing slash it is a path
        ("*.*.geo.azurecr.io/team", "team/app", True),
        ("*.*.geo.azurecr.io/te*", "team/app", False),  # no globs in paths
        (EASTUS + "/te%61m", "team/app", True),  # url.Parse unescapes the path
        (EASTUS + "/team?x=1", "team/app", True),  # query and fragment are cut off
        (EASTUS + "#frag", "team/app", True),
    ],
)
def test_paths(key: str, path: str, expected: bool) -> None:
    assert key_matches(key, EASTUS, path) is expected


def test_image_path_may_start_with_a_slash() -> None:
    assert key_matches(EASTUS + "/team", EASTUS, "/team/app")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "https://",
        "contoso eastus.geo.azurecr.io",
        "contoso.eastus.geo.azurecr.io:44x",
        "contoso.eastus.geo.azurecr.io\n",
        "contoso%41.eastus.geo.azurecr.io",  # %-escapes of ASCII are invalid in a host
        "[::1",
        EASTUS + "/%zz",
        "user name@" + EASTUS,
        "contoso\\.eastus.geo.azurecr.io",
    ],
)
def test_keys_url_parse_rejects_never_match(key: str) -> None:
    assert not key_matches(key, EASTUS)
    assert not key_matches(key, EASTUS, "team/app")


def test_userinfo_is_not_part_of_the_host() -> None:
    assert key_matches("user@" + EASTUS, EASTUS)
    assert key_matches("https://user:pw@" + EASTUS + "/team", EASTUS, "team/app")


def test_non_ascii_host_escapes_are_decoded() -> None:
    assert key_matches("b%C3%BCcher.example", "bücher.example")


@pytest.mark.parametrize(
    ("key", "host", "path", "expected"),
    [
        ("https://index.docker.io/v1/", "docker.io", "library/nginx", True),
        ("index.docker.io", "docker.io", "library/nginx", True),
        ("https://index.docker.io/v1/", "index.docker.io", "library/nginx", True),
        ("https://index.docker.io/v1/", "docker.io", "", True),
        ("https://index.docker.io/v1/", EASTUS, "team/app", False),
        ("https://index.docker.io/v1/", EASTUS, "", False),
        ("docker.io", "docker.io", "library/nginx", True),
        ("docker.io", "index.docker.io", "library/nginx", False),
    ],
)
def test_docker_hub_fallback(key: str, host: str, path: str, expected: bool) -> None:
    assert key_matches(key, host, path) is expected


# --------------------------------------------------------------------------- properties

LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
HOST_LABELS = st.lists(LABEL, min_size=1, max_size=6)
PORT = st.integers(min_value=1, max_value=65535).map(str)
PATH = st.lists(st.from_regex(r"\A[a-z0-9]{1,6}\Z"), min_size=0, max_size=3).map("/".join)


@given(HOST_LABELS, st.data())
def test_any_labels_replaced_by_star_match(labels: list[str], data: st.DataObject) -> None:
    mask = data.draw(st.lists(st.booleans(), min_size=len(labels), max_size=len(labels)))
    key = ".".join("*" if starred else label for label, starred in zip(labels, mask, strict=True))
    host = ".".join(labels)
    assert key_matches(key, host)
    assert covers([{key: DockerAuth()}], host)


@given(HOST_LABELS, LABEL)
def test_a_star_never_spans_two_labels(labels: list[str], extra: str) -> None:
    host = ".".join([extra, *labels])
    assert not key_matches("*." + ".".join(labels[1:]) if len(labels) > 1 else "*", host)
    assert not key_matches("*." + host, host)
    assert key_matches("*." + ".".join(labels), host)


@given(HOST_LABELS, HOST_LABELS)
def test_exact_keys_match_only_their_host(a: list[str], b: list[str]) -> None:
    ha, hb = ".".join(a), ".".join(b)
    assert key_matches(ha, hb) is (ha == hb)


@given(HOST_LABELS, st.one_of(st.none(), PORT), st.one_of(st.none(), PORT), PATH)
def test_ports_must_be_equal(labels: list[str], key_port: str | None, host_port: str | None, path: str) -> None:
    name = ".".join(labels)
    key = name if key_port is None else f"{name}:{key_port}"
    host = name if host_port is None else f"{name}:{host_port}"
    assert key_matches(key, host, path) is (key_port == host_port)


@given(HOST_LABELS, PATH, PATH)
def test_key_path_is_a_string_prefix(labels: list[str], key_path: str, image_path: str) -> None:
    host = ".".join(labels)
    key = f"{host}/{key_path}" if key_path else host
    expected = not key_path or (image_path != "" and ("/" + image_path).startswith("/" + key_path))
    assert key_matches(key, host, image_path) is expected


KEYS = st.tuples(
    st.lists(st.one_of(LABEL, st.just("*")), min_size=1, max_size=6).map(".".join),
    st.one_of(st.just(""), PORT.map(lambda p: ":" + p)),
    st.one_of(st.just(""), PATH.map(lambda p: "/" + p)),
).map("".join)


@given(KEYS, HOST_LABELS, PATH)
def test_scheme_and_registry_root_are_transparent(key: str, labels: list[str], path: str) -> None:
    host = ".".join(labels)
    expected = key_matches(key, host, path)
    assert key_matches("https://" + key, host, path) is expected
    assert key_matches("http://" + key, host, path) is expected
    if "/" not in key:
        assert key_matches(key + "/v2/", host, path) is expected
        assert key_matches(key + "/v1/", host, path) is expected
        assert key_matches(key + "/", host, path) is expected


@given(st.from_regex(r"\A[a-c*?]{0,6}\Z"), st.from_regex(r"\A[a-c]{0,6}\Z"))
def test_glob_agrees_with_fnmatch_on_stars_and_question_marks(pattern: str, name: str) -> None:
    assert _glob_match(pattern, name) is fnmatch.fnmatchcase(name, pattern)


@given(st.from_regex(r"\A[a-e]\Z"), st.from_regex(r"\A[a-e]\Z"), st.from_regex(r"\A[a-e]\Z"))
def test_glob_classes_and_ranges(low: str, high: str, char: str) -> None:
    assert _glob_match(f"[{low}-{high}]", char) is (low <= char <= high)
    assert _glob_match(f"[^{low}-{high}]", char) is not (low <= char <= high)
    assert _glob_match(f"[{low}{high}]", char) is (char in (low, high))


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("a\\", "a", False),  # trailing backslash: bad pattern
        ("[]a]", "a", False),  # ']' first in a class: bad pattern
        ("[a-]", "a", False),
        ("[", "x", False),
        ("[a", "a", False),
        ("a]", "a]", True),
        ("[*]", "*", True),
        ("*", "", True),
        ("a*b*c", "axxbyyc", True),
        ("a*b*c", "axxbyy", False),
        ("*x", "xx", True),
        ("*", "a/", False),  # '*' never crosses a separator
        ("*b", "a/b", False),
        ("*/", "a/", True),
        ("?", "/", False),
        ("?", "é", True),
    ],
)
def test_glob_edge_cases(pattern: str, name: str, expected: bool) -> None:
    assert _glob_match(pattern, name) is expected


# --------------------------------------------------------------------------- covers and missing_hosts


def test_covers_with_path() -> None:
    team = secret_for(EASTUS + "/team")
    assert covers([team], EASTUS, "team/app")
    assert not covers([team], EASTUS, "other/app")
    assert not covers([team], EASTUS)


def test_covers_nothing() -> None:
    assert not covers([], EASTUS)
    assert not covers([{}], EASTUS)


def test_missing_hosts_keeps_order_once_and_accepts_iterators() -> None:
    secrets = iter([secret_for(WESTUS)])
    hosts = iter([EASTUS, WESTUS, GLOBAL, EASTUS])
    assert missing_hosts(secrets, hosts) == [EASTUS, GLOBAL]


def test_missing_hosts_with_ports() -> None:
    secrets = [secret_for("*.*.geo.azurecr.io")]
    assert missing_hosts(secrets, [EASTUS, EASTUS + ":443"]) == [EASTUS + ":443"]


# --------------------------------------------------------------------------- parse_dockerconfig


def test_parse_dockerconfigjson_keys_as_written() -> None:
    keys = ["https://" + GLOBAL, EASTUS + ":443", WESTUS + "/team", "*.*.geo.azurecr.io"]
    parsed = parse_dockerconfig(dockerconfigjson({k: {"auth": auth_field()} for k in keys}))
    assert list(parsed) == keys
    assert set(parsed.values()) == {DockerAuth(USER, PASSWORD)}


def test_parse_username_password_email() -> None:
    parsed = parse_dockerconfig(
        dockerconfigjson({GLOBAL: {"username": "u", "password": "p", "email": "e@example.com"}})
    )
    assert parsed == {GLOBAL: DockerAuth("u", "p", "e@example.com")}


def test_auth_overrides_username_and_password() -> None:
    parsed = parse_dockerconfig(dockerconfigjson({GLOBAL: {"username": "u", "password": "p", "auth": auth_field()}}))
    assert parsed[GLOBAL] == DockerAuth(USER, PASSWORD)


def test_password_may_contain_colons() -> None:
    parsed = parse_dockerconfig(dockerconfigjson({GLOBAL: {"auth": b64("user:pa:ss")}}))
    assert parsed[GLOBAL] == DockerAuth("user", "pa:ss")


def test_unpadded_and_wrapped_auth_is_accepted() -> None:
    unpadded = b64("ab:c").rstrip("=")
    assert unpadded != b64("ab:c")
    parsed = parse_dockerconfig(dockerconfigjson({GLOBAL: {"auth": unpadded}}))
    assert parsed[GLOBAL] == DockerAuth("ab", "c")
    wrapped = auth_field()[:8] + "\n" + auth_field()[8:]
    assert parse_dockerconfig(dockerconfigjson({GLOBAL: {"auth": wrapped}}))[GLOBAL] == DockerAuth(USER, PASSWORD)


def test_field_names_are_case_insensitive_like_go() -> None:
    parsed = parse_dockerconfig({DOCKERCONFIGJSON_KEY: b64(json.dumps({"Auths": {GLOBAL: {"Auth": auth_field()}}}))})
    assert parsed == {GLOBAL: DockerAuth(USER, PASSWORD)}


def test_nulls_and_empty_documents() -> None:
    assert parse_dockerconfig({DOCKERCONFIGJSON_KEY: b64("{}")}) == {}
    assert parse_dockerconfig({DOCKERCONFIGJSON_KEY: b64("null")}) == {}
    assert parse_dockerconfig({DOCKERCONFIGJSON_KEY: b64('{"auths": null}')}) == {}
    assert parse_dockerconfig(dockerconfigjson({GLOBAL: None})) == {GLOBAL: DockerAuth()}
    assert parse_dockerconfig(dockerconfigjson({GLOBAL: {"username": None, "auth": ""}})) == {GLOBAL: DockerAuth()}
    # A .dockercfg-shaped document in .dockerconfigjson has no "auths": the kubelet sees no credentials.
    assert parse_dockerconfig({DOCKERCONFIGJSON_KEY: b64(json.dumps({GLOBAL: {"auth": auth_field()}}))}) == {}


def test_dockercfg() -> None:
    data = {DOCKERCFG_KEY: b64(json.dumps({"https://" + GLOBAL: {"auth": auth_field(), "email": "x@y"}}))}
    parsed = parse_dockerconfig(data)
    assert parsed == {"https://" + GLOBAL: DockerAuth(USER, PASSWORD, "x@y")}
    assert parse_dockerconfig(data, SECRET_TYPE_DOCKERCFG) == parsed
    assert covers([parsed], GLOBAL)
    assert parse_dockerconfig({DOCKERCFG_KEY: b64("null")}) == {}


def test_secret_type_selects_the_data_key() -> None:
    json_data = dockerconfigjson({EASTUS: {"auth": auth_field()}})
    cfg_data = {DOCKERCFG_KEY: b64(json.dumps({WESTUS: {"auth": auth_field()}}))}
    both = {**json_data, **cfg_data}
    assert list(parse_dockerconfig(both)) == [EASTUS]
    assert list(parse_dockerconfig(both, SECRET_TYPE_DOCKERCONFIGJSON)) == [EASTUS]
    assert list(parse_dockerconfig(both, SECRET_TYPE_DOCKERCFG)) == [WESTUS]
    with pytest.raises(MalformedPullSecret, match=r"without \.dockercfg"):
        parse_dockerconfig(json_data, SECRET_TYPE_DOCKERCFG)
    with pytest.raises(MalformedPullSecret, match="Opaque"):
        parse_dockerconfig(both, "Opaque")


SECRET_AUTH = auth_field()
MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({}, r"neither \.dockerconfigjson nor \.dockercfg .*keys: none"),
    ({"password": PASSWORD}, r"not a pull secret.*'password'"),
    ({DOCKERCONFIGJSON_KEY: ""}, "is empty"),
    ({DOCKERCONFIGJSON_KEY: 42}, "not a base64 string"),
    ({DOCKERCONFIGJSON_KEY: PASSWORD + "!"}, "not valid base64"),
    ({DOCKERCONFIGJSON_KEY: b64(b"\xff" + PASSWORD.encode())}, "not UTF-8"),
    ({DOCKERCONFIGJSON_KEY: b64('{"auths": {"h": {"auth": "' + SECRET_AUTH + '"')}, "not valid JSON"),
    ({DOCKERCONFIGJSON_KEY: b64(json.dumps([PASSWORD]))}, "not a JSON object"),
    ({DOCKERCONFIGJSON_KEY: b64(json.dumps({"auths": [PASSWORD]}))}, '"auths" is not a JSON object'),
    (dockerconfigjson({GLOBAL: PASSWORD}), f"entry '{GLOBAL}' is not a JSON object"),
    (dockerconfigjson({GLOBAL: {"password": [PASSWORD]}}), "field 'password' is not a string"),
    (dockerconfigjson({GLOBAL: {"auth": PASSWORD}}), "field 'auth' is not base64"),
    (dockerconfigjson({GLOBAL: {"auth": b64(PASSWORD)}}), "field 'auth' is not base64 of 'username:password'"),
    (dockerconfigjson({GLOBAL: {"auth": SECRET_AUTH + " "}}), "field 'auth'"),
    (dockerconfigjson({GLOBAL: {"auth": SECRET_AUTH.rstrip("=") + "AA"}}), "field 'auth'"),  # 4n+1 chars
    ({DOCKERCFG_KEY: b64(json.dumps(PASSWORD))}, r"\.dockercfg is not a JSON object"),
    ({DOCKERCFG_KEY: b64(json.dumps({GLOBAL: {"auth": PASSWORD}}))}, r"\.dockercfg: entry"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_secrets_raise_clear_errors_without_secret_text(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedPullSecret, match=message) as caught:
        parse_dockerconfig(data)
    assert isinstance(caught.value, ValueError)
    assert_no_secret(caught.value, PASSWORD, SECRET_AUTH)


def test_long_keys_are_shortened_in_messages() -> None:
    key = "k" * 500
    with pytest.raises(MalformedPullSecret) as caught:
        parse_dockerconfig(dockerconfigjson({key: 1}))
    assert len(str(caught.value)) < 200


# A non-ASCII marker: a generated password can never be a substring of the (ASCII) message text itself.
@given(st.text(min_size=8, alphabet=st.characters(codec="utf-8", exclude_characters=":")).map(lambda s: "\u2603" + s))
def test_no_error_or_repr_ever_shows_the_password(password: str) -> None:
    assume(password.strip() == password)
    auth = DockerAuth("user", password)
    assert password not in repr(auth)
    assert password not in str(auth)
    for entry in ({"auth": b64(password)}, {"password": [password]}, {"auth": password + "%"}):
        with pytest.raises(MalformedPullSecret) as caught:
            parse_dockerconfig(dockerconfigjson({GLOBAL: entry}))
        assert_no_secret(caught.value, password)


def test_docker_auth_repr_hides_the_password_only() -> None:
    text = repr(DockerAuth("someone", PASSWORD, "a@b"))
    assert PASSWORD not in text
    assert "someone" in text
    assert "a@b" in text


# --------------------------------------------------------------------------- sibling_dockerconfig


def decode_sibling(data: dict[str, str]) -> dict[str, Any]:
    assert list(data) == [DOCKERCONFIGJSON_KEY]
    document: dict[str, Any] = json.loads(base64.b64decode(data[DOCKERCONFIGJSON_KEY], validate=True))
    return document


def test_sibling_copies_the_credentials_to_every_regional_host() -> None:
    auth = DockerAuth(USER, PASSWORD, "ops@example.com")
    data = sibling_dockerconfig(GLOBAL, [WESTUS, EASTUS, WESTUS], auth)
    document = decode_sibling(data)
    assert list(document["auths"]) == [EASTUS, WESTUS]
    entry = document["auths"][EASTUS]
    assert entry == {"username": USER, "password": PASSWORD, "auth": auth_field(), "email": "ops@example.com"}

    parsed = parse_dockerconfig(data, SECRET_TYPE_DOCKERCONFIGJSON)
    assert parsed == {EASTUS: auth, WESTUS: auth}
    assert missing_hosts([parsed], REGIONAL) == []
    assert missing_hosts([parsed], [GLOBAL]) == [GLOBAL]  # the workload's own secret covers the global host


def test_sibling_is_deterministic_and_leaves_out_the_global_host() -> None:
    auth = DockerAuth("u", "p")
    a = sibling_dockerconfig(GLOBAL, [EASTUS, GLOBAL, WESTUS], auth)
    b = sibling_dockerconfig(GLOBAL, [WESTUS, "CONTOSO.azurecr.io", EASTUS], auth)
    assert a == b
    assert "email" not in decode_sibling(a)["auths"][EASTUS]


def test_sibling_with_ports() -> None:
    data = sibling_dockerconfig("127.0.0.1:5000", ["127.0.0.1:5001", "127.0.0.1:5002"], DockerAuth("u", "p"))
    parsed = parse_dockerconfig(data)
    assert missing_hosts([parsed], ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5000"]) == ["127.0.0.1:5000"]


@pytest.mark.parametrize(
    ("global_host", "regional"),
    [
        (GLOBAL, []),
        (GLOBAL, [GLOBAL]),
        (GLOBAL, ["https://" + EASTUS]),
        (GLOBAL, [EASTUS + "/team"]),
        (GLOBAL, ["nginx"]),
        ("", [EASTUS]),
        ("https://" + GLOBAL, [EASTUS]),
    ],
)
def test_sibling_rejects_bad_input(global_host: str, regional: list[str]) -> None:
    with pytest.raises(ValueError, match="host") as caught:
        sibling_dockerconfig(global_host, regional, DockerAuth("u", PASSWORD))
    assert PASSWORD not in str(caught.value)


@given(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters=":"), max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.lists(LABEL, min_size=1, max_size=4, unique=True),
)
def test_sibling_round_trips_any_credentials(username: str, password: str, regions: list[str]) -> None:
    hosts = [f"contoso.{region}.geo.azurecr.io" for region in regions]
    auth = DockerAuth(username, password)
    parsed = parse_dockerconfig(sibling_dockerconfig(GLOBAL, hosts, auth))
    assert parsed == dict.fromkeys(sorted(hosts), auth)
    assert missing_hosts([parsed], hosts) == []
