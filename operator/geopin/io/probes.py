"""Registry probes: is a regional endpoint serving, and does it have the canary image?

One :class:`RegistryClient` per policy holds one ``httpx.AsyncClient`` (HTTP/1.1) and, per endpoint,
the authentication state: every regional endpoint of a geo-replicated registry is its own
authenticated surface, so challenges, bearer tokens and ACR refresh tokens are cached per endpoint
(and per scope), each until its expiry minus a margin.

Outcomes (the ``reason`` label of ``geopin_probe_failures_total``):

- ``ok``: ``GET /v2/`` answered 2xx, or 401 with a ``WWW-Authenticate`` challenge (the registry is up
  and asks for credentials); a canary manifest ``HEAD`` answered 2xx.
- ``timeout``: no answer within ``timeout_seconds`` (connect, TLS handshake or read); the whole probe,
  authentication included, is bounded by it. A 408 answer too.
- ``connect``: connection refused or reset, DNS failure, a broken HTTP exchange.
- ``tls``: certificate or handshake failure (an ``ssl.SSLError`` anywhere in the exception chain).
- ``http_5xx``: a 5xx answer.  ``throttled``: 429.
- ``unauthorized``: 401 without a challenge, 401 after authenticating, 403, a token endpoint refusing.
- ``not_found``: 404/410 (for a canary: the image is not on this replica), or any other answer that is
  not the registry API (3xx after redirects, 400, 405, ...).
- ``data_endpoint``: a deep probe's blob download failed after the registry redirected it to another
  host (ACR's ``<name>.<region>.data.azurecr.io``): the login endpoint answers, pulls would not.

Deep probe (with a canary image): a manifest ``HEAD``; the manifest itself is read once per digest
(an index is followed to one image) to learn the config blob's digest; then ``GET`` of that blob,
following the registry's redirect by hand and reading at most ``BLOB_READ_LIMIT`` bytes. The
redirect's target gets no ``Authorization`` header when it is another origin (ACR's data URLs are
pre-signed, and a registry token must not leak to another host). httpx would drop the header too
(except for an http→https upgrade of the same host), but the rule is geopin's, so it is written here.

Authentication, answered to the challenge of each endpoint:

- ``Bearer realm=...,service=...`` (distribution token auth): ``GET realm?service=&scope=``, with basic
  credentials when configured, anonymous otherwise; the answer's ``token`` (or ``access_token``) and
  ``expires_in`` (default 60 s).
- ``Basic``: the basic credentials.
- ACR with an Azure AD credential (workload identity): an AAD token for
  ``https://containerregistry.azure.net/.default`` is exchanged at ``POST /oauth2/exchange``
  (``grant_type=access_token``) for an ACR refresh token, which ``POST /oauth2/token``
  (``grant_type=refresh_token``) turns into a scoped access token.

Passwords and tokens never appear in a message, an exception, a repr or a log line, in any encoding:
messages are built from outcome classes, errno texts, standard HTTP reason phrases and validated
header values, never from an exception's or a server's free text (h11 quotes the repr of a header
value it refuses, and a registry that received a token could echo it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import http
import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from geopin import __version__
from geopin.core.references import InvalidReference, parse
from geopin.core.text import one_line

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "AAD_SCOPE",
    "MANIFEST_ACCEPT",
    "BasicCredentials",
    "Outcome",
    "ProbeError",
    "ProbeResult",
    "RegistryClient",
    "classify_exception",
    "classify_status",
    "parse_challenge",
]

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)

AAD_SCOPE = "https://containerregistry.azure.net/.default"
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
DEFAULT_TOKEN_SECONDS = 60.0
# ACR refresh tokens are JWTs with an `exp`; when one cannot be read, assume this much.
DEFAULT_REFRESH_TOKEN_SECONDS = 600.0
MAX_MARGIN_SECONDS = 30.0
# A deep probe reads at most this much of the canary's config blob: enough to prove the download
# path works, never a real layer's worth of traffic per probe.
BLOB_READ_LIMIT = 64 * 1024
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
INDEX_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


class Outcome(enum.StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    TLS = "tls"
    HTTP_5XX = "http_5xx"
    THROTTLED = "throttled"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    DATA_ENDPOINT = "data_endpoint"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: Outcome
    status: int | None
    latency_seconds: float
    message: str


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)


class ProbeError(Exception):
    """A probe or lookup failed; ``outcome`` classifies it, ``message`` is one secret-free line."""

    def __init__(self, outcome: Outcome, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"ProbeError({self.outcome.value!r}, {self.message!r}, status={self.status!r})"


# -- classification (pure) ---------------------------------------------------------------------


def classify_status(status: int, *, challenged: bool = False) -> Outcome:
    """The outcome of an HTTP answer; ``challenged``: a 401 carried a usable WWW-Authenticate."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 401:
        return Outcome.OK if challenged else Outcome.UNAUTHORIZED
    if status == 403:
        return Outcome.UNAUTHORIZED
    if status == 408:
        return Outcome.TIMEOUT
    if status == 429:
        return Outcome.THROTTLED
    if 500 <= status < 600:
        return Outcome.HTTP_5XX
    return Outcome.NOT_FOUND


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes/contexts, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _in_chain(error: BaseException, kind: type[E]) -> E | None:
    return next((e for e in _chain(error) if isinstance(e, kind)), None)


def classify_exception(error: BaseException, timeout_seconds: float | None = None) -> tuple[Outcome, str]:
    """(outcome, one-line message) for an exception raised while talking to a registry.

    The message comes from the exception's class, errno and TLS verdict, never from its text, which
    may quote a request header and so a credential.
    """
    after = "" if timeout_seconds is None else f" after {timeout_seconds:g}s"
    if isinstance(error, httpx.ConnectTimeout):
        return Outcome.TIMEOUT, f"connect timeout{after}"
    if isinstance(error, httpx.ReadTimeout):
        return Outcome.TIMEOUT, f"read timeout{after}"
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return Outcome.TIMEOUT, f"timeout{after}"
    tls = _in_chain(error, ssl.SSLError)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError):
            # OpenSSL's verdict (X509_verify_cert_error_string, with the host name on a mismatch).
            verdict = getattr(tls, "verify_message", None) or "unknown reason"
            return Outcome.TLS, f"TLS certificate verify failed: {one_line(verdict)}"
        return Outcome.TLS, f"TLS error: {one_line(getattr(tls, 'reason', None) or type(tls).__name__)}"
    if isinstance(error, httpx.ConnectError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
        # anyio wraps the refusal: OSError("All connection attempts failed") from ConnectionRefusedError.
        # asyncio's own strerror is "Connect call failed (host, port)": prefer the errno's text.
        detail = next((_os_error_text(e) for e in _chain(error) if isinstance(e, OSError) and e.errno), None)
        return Outcome.CONNECT, f"connect: {detail or type(error).__name__}"
    if isinstance(error, httpx.LocalProtocolError | UnicodeError):
        return Outcome.CONNECT, f"request not sent: a header value is not valid HTTP ({type(error).__name__})"
    if isinstance(error, httpx.InvalidURL):
        return Outcome.CONNECT, "request not sent: the URL is not valid (InvalidURL)"
    if isinstance(error, httpx.RemoteProtocolError):
        return Outcome.CONNECT, "the registry broke off the HTTP exchange (RemoteProtocolError)"
    if isinstance(error, httpx.TransportError):
        return Outcome.CONNECT, f"transport error ({type(error).__name__})"
    if isinstance(error, OSError):
        return Outcome.CONNECT, f"connect: {_os_error_text(error)}"
    return Outcome.CONNECT, f"unexpected error ({type(error).__name__})"


def _os_error_text(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"name resolution failed: {error.strerror or type(error).__name__}".lower()
    if error.errno:
        return os.strerror(error.errno).lower()
    return type(error).__name__


def _status_text(response: httpx.Response) -> str:
    """``HTTP 503 Service Unavailable``: the standard reason phrase, never the one the server sent."""
    status = response.status_code
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


_DIGEST_HEADER_RE = re.compile(r"sha(?:256|384|512):[0-9a-f]{64,128}")


_PARAM_RE = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` challenge: ``scheme`` is ``bearer`` or ``basic``."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


def parse_challenge(headers: httpx.Headers) -> Challenge | None:
    """The Bearer challenge of a 401 if it has one (with a realm), else its Basic one, else None."""
    found: dict[str, Challenge] = {}
    for value in headers.get_list("www-authenticate"):
        scheme, _, rest = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "basic") or scheme in found:
            continue
        params: dict[str, str] = {}
        for match in _PARAM_RE.finditer(rest):
            quoted, bare = match.group(2), match.group(3)
            params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        found[scheme] = Challenge(scheme=scheme, params=params)
    bearer = found.get("bearer")
    if bearer is not None and bearer.realm:
        return bearer
    return found.get("basic")


# -- the client --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # on the client's monotonic clock


def _jwt_seconds_left(token: str) -> float | None:
    """Seconds until a JWT's ``exp`` (unverified: only to schedule a refresh), or None."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - time.time()
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def _split_canary(canary: str) -> tuple[str, str]:
    try:
        ref = parse(canary)
    except InvalidReference as e:
        raise ProbeError(Outcome.NOT_FOUND, f"invalid canary image {canary!r}: {e.reason}") from None
    path = ref.path if ref.host is None else f"{ref.host}/{ref.path}"
    return path, ref.digest or ref.tag or "latest"


class RegistryClient:
    """Probes and manifest lookups against registry endpoints (``host[:port]``), with auth caching.

    ``transport`` and ``clock`` exist for tests (``httpx.MockTransport``, a fake monotonic clock).
    Use one client per event loop; close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        *,
        scheme: str = "https",
        timeout_seconds: float = 2.0,
        ca_bundle: str = "",
        credentials: BasicCredentials | None = None,
        aad_credential: AsyncTokenCredential | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if scheme not in ("https", "http"):
            raise ValueError(f"scheme must be https or http, got {scheme!r}")
        self.scheme = scheme
        self.timeout_seconds = float(timeout_seconds)
        self._credentials = credentials
        self._aad = aad_credential
        self._clock = clock
        if ca_bundle:
            try:
                verify = ssl.create_default_context(cadata=ca_bundle)
            except (ssl.SSLError, ValueError):
                raise ValueError("caBundle is not a valid PEM certificate bundle") from None
        else:
            verify = ssl.create_default_context()
        self._http = httpx.AsyncClient(
            verify=verify,
            http2=False,
            timeout=httpx.Timeout(self.timeout_seconds),
            follow_redirects=True,
            headers={"User-Agent": f"geopin/{__version__}"},
            transport=transport,
        )
        self._challenges: dict[str, Challenge | None] = {}
        # (repository, manifest digest) → config blob digest: content-addressed, so shared by endpoints.
        self._configs: dict[tuple[str, str], str] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._refresh_tokens: dict[str, _Token] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        auth = "aad" if self._aad is not None else "basic" if self._credentials is not None else "anonymous"
        return f"RegistryClient(scheme={self.scheme!r}, timeout_seconds={self.timeout_seconds:g}, auth={auth})"

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- public operations ---------------------------------------------------------------------

    async def probe(self, endpoint: str, canary: str | None = None) -> ProbeResult:
        """Probe ``endpoint`` once; never raises for registry trouble, never outlives the timeout."""
        started = self._clock()
        status: int | None = None
        progress = _Progress()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                if canary is None:
                    status, outcome, message = await self._ping(endpoint)
                else:
                    repository, reference = _split_canary(canary)
                    status, outcome, message = await self._deep_probe(endpoint, repository, reference, progress)
        except ProbeError as e:
            outcome, message, status = e.outcome, e.message, e.status
        except TimeoutError:
            outcome, message = Outcome.TIMEOUT, f"timeout after {self.timeout_seconds:g}s"
            if progress.data_host is not None:
                outcome, message = Outcome.DATA_ENDPOINT, f"data endpoint {progress.data_host}: {message}"
        latency = max(self._clock() - started, 0.0)
        return ProbeResult(outcome=outcome, status=status, latency_seconds=latency, message=self._scrub(message))

    async def manifest_digest(self, endpoint: str, repository: str, reference: str) -> str | None:
        """The manifest digest of ``repository:reference`` on ``endpoint``; None when it is absent (404).

        Raises :class:`ProbeError` on any other failure (bounded by the timeout like a probe).
        """
        try:
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._manifest_head(endpoint, repository, reference)
                if response.status_code in (404, 410):
                    return None
                outcome = classify_status(response.status_code)
                if outcome is not Outcome.OK:
                    raise ProbeError(
                        outcome,
                        self._scrub(self._describe_manifest(response, f"{repository}:{reference}", outcome)),
                        response.status_code,
                    )
                digest: str | None = response.headers.get("docker-content-digest")
                if digest:
                    return digest
                # No digest header (allowed by the spec for HEAD): fetch the manifest and hash it.
                response = await self._authorized(
                    "GET", endpoint, f"/v2/{repository}/manifests/{reference}", f"repository:{repository}:pull"
                )
                if response.status_code != 200:
                    raise ProbeError(
                        classify_status(response.status_code),
                        f"GET manifest {repository}:{reference}: HTTP {response.status_code}",
                        response.status_code,
                    )
                return "sha256:" + hashlib.sha256(response.content).hexdigest()
        except TimeoutError:
            raise ProbeError(Outcome.TIMEOUT, f"timeout after {self.timeout_seconds:g}s") from None

    # -- requests ------------------------------------------------------------------------------

    def _url(self, endpoint: str, path: str) -> str:
        return f"{self.scheme}://{endpoint}{path}"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        auth: httpx.Auth | None = None,
        stream: bool = False,
        follow_redirects: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; ``stream``: the body is left unread (the caller reads and closes it)."""
        try:
            request = self._http.build_request(method, url, **kwargs)
            return await self._http.send(request, auth=auth, stream=stream, follow_redirects=follow_redirects)
        except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, UnicodeError) as e:
            # UnicodeError: httpx encodes header values as ASCII while building the request;
            # InvalidURL: a challenge's realm that is not a URL.
            outcome, message = classify_exception(e, self.timeout_seconds)
            raise ProbeError(outcome, self._scrub(message)) from None

    async def _ping(self, endpoint: str) -> tuple[int, Outcome, str]:
        response = await self._send("GET", self._url(endpoint, "/v2/"))
        status = response.status_code
        challenge = parse_challenge(response.headers) if status == 401 else None
        if status == 401:
            self._challenges[endpoint] = challenge
        outcome = classify_status(status, challenged=challenge is not None)
        if outcome is Outcome.OK:
            auth = f" ({challenge.scheme} auth)" if challenge is not None else ""
            return status, outcome, f"GET /v2/: HTTP {status}{auth}"
        if status == 401:
            return status, outcome, "GET /v2/: HTTP 401 without a WWW-Authenticate challenge"
        return status, outcome, f"GET /v2/: {_status_text(response)}"

    async def _manifest_head(self, endpoint: str, repository: str, reference: str) -> httpx.Response:
        return await self._authorized(
            "HEAD",
            endpoint,
            f"/v2/{repository}/manifests/{reference}",
            f"repository:{repository}:pull",
            headers={"Accept": MANIFEST_ACCEPT},
        )

    @staticmethod
    def _describe_manifest(response: httpx.Response, image: str, outcome: Outcome) -> str:
        status = response.status_code
        if outcome is Outcome.OK:
            digest = response.headers.get("docker-content-digest", "")
            shown = f" {digest}" if _DIGEST_HEADER_RE.fullmatch(digest) else ""
            return f"manifest {image}: HTTP {status}{shown}"
        if status in (404, 410):
            return f"manifest {image} not found (HTTP {status})"
        if status == 401:
            challenge = parse_challenge(response.headers)
            if challenge is None:
                return f"manifest {image}: HTTP 401 without a challenge"
            return f"manifest {image}: HTTP 401, {challenge.scheme} credentials missing or refused"
        return f"manifest {image}: {_status_text(response)}"

    async def _authorized(
        self,
        method: str,
        endpoint: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None = None,
        *,
        blob: bool = False,
    ) -> httpx.Response:
        """Send with the endpoint's known authorization; on a 401 challenge, authenticate and retry once.

        ``blob``: the answer is streamed and redirects are not followed (see :meth:`_fetch_blob`).
        """
        url = self._url(endpoint, path)
        base = dict(headers or {})
        options: dict[str, Any] = {"stream": True, "follow_redirects": False} if blob else {}
        known = self._challenges.get(endpoint)
        authorization = await self._authorization(endpoint, known, scope, force=False) if known else None
        response = await self._send(method, url, headers=_with_auth(base, authorization), **options)
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers)
        self._challenges[endpoint] = challenge
        if challenge is None:
            return response
        retry = await self._authorization(endpoint, challenge, scope, force=authorization is not None)
        if retry is None or (retry == authorization and challenge.scheme == "basic"):
            return response
        if blob:
            await response.aclose()
        return await self._send(method, url, headers=_with_auth(base, retry), **options)

    # -- deep probe ----------------------------------------------------------------------------

    async def _deep_probe(
        self, endpoint: str, repository: str, reference: str, progress: _Progress
    ) -> tuple[int | None, Outcome, str]:
        """Manifest HEAD, then the config blob through the registry's redirect (raises ProbeError)."""
        image = f"{repository}:{reference}"
        response = await self._manifest_head(endpoint, repository, reference)
        outcome = classify_status(response.status_code)
        head = self._describe_manifest(response, image, outcome)
        if outcome is not Outcome.OK:
            return response.status_code, outcome, head
        digest = response.headers.get("docker-content-digest") or None
        config = self._configs.get((repository, digest)) if digest else None
        if config is None:
            config = await self._config_digest(endpoint, repository, digest or reference, image)
            if digest:
                self._configs[(repository, digest)] = config
        status, detail = await self._fetch_blob(endpoint, repository, config, progress)
        return status, Outcome.OK, f"{head}; {detail}"

    async def _config_digest(self, endpoint: str, repository: str, reference: str, image: str) -> str:
        """The config blob's digest of the canary (an index is followed to its first linux/amd64 image)."""
        for _ in range(2):
            response = await self._authorized(
                "GET",
                endpoint,
                f"/v2/{repository}/manifests/{reference}",
                f"repository:{repository}:pull",
                headers={"Accept": MANIFEST_ACCEPT},
            )
            if response.status_code != 200:
                outcome = classify_status(response.status_code)
                if outcome is Outcome.OK:
                    outcome = Outcome.NOT_FOUND
                raise ProbeError(
                    outcome, f"GET manifest {image}: HTTP {response.status_code}".rstrip(), response.status_code
                )
            try:
                manifest = response.json()
            except ValueError:
                manifest = None
            if not isinstance(manifest, dict):
                raise ProbeError(Outcome.NOT_FOUND, f"manifest {image} is not JSON", response.status_code)
            media_type = manifest.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
            if media_type in INDEX_MEDIA_TYPES or isinstance(manifest.get("manifests"), list):
                child = _index_choice(manifest.get("manifests"))
                if child is None:
                    raise ProbeError(Outcome.NOT_FOUND, f"index {image} lists no image manifest")
                reference = child
                continue
            config = manifest.get("config")
            digest = config.get("digest") if isinstance(config, dict) else None
            if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
                raise ProbeError(Outcome.NOT_FOUND, f"manifest {image} has no config blob digest")
            return digest
        raise ProbeError(Outcome.NOT_FOUND, f"index {image} points to another index")

    async def _fetch_blob(self, endpoint: str, repository: str, digest: str, progress: _Progress) -> tuple[int, str]:
        """GET the blob, following redirects by hand; (HTTP status, detail) or ProbeError.

        A failure after the registry sent the download to another host is ``data_endpoint`` (429 stays
        ``throttled``): the replica's login endpoint works, its downloads do not.
        """
        short = digest.split(":", 1)[-1][:12]
        response = await self._authorized(
            "GET", endpoint, f"/v2/{repository}/blobs/{digest}", f"repository:{repository}:pull", blob=True
        )
        origin = _origin(response.request.url)
        authorization = response.request.headers.get("Authorization")
        try:
            hops = 0
            while response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                await response.aclose()
                hops += 1
                if not location or hops > MAX_REDIRECTS:
                    problem = (
                        "a redirect without a Location" if not location else f"more than {MAX_REDIRECTS} redirects"
                    )
                    raise self._blob_error(progress, Outcome.NOT_FOUND, f"config blob {short}: {problem}")
                target = response.request.url.join(location)
                same_origin = _origin(target) == origin
                if not same_origin:
                    progress.data_host = _host_of(target)
                # Never forward the registry's Authorization to another origin (a pre-signed data URL).
                headers = {"Authorization": authorization} if same_origin and authorization else {}
                try:
                    response = await self._send(
                        "GET", str(target), headers=headers, stream=True, follow_redirects=False
                    )
                except ProbeError as e:
                    raise self._blob_error(progress, e.outcome, e.message, e.status) from None
            status = response.status_code
            if status != 200:
                outcome = classify_status(status)
                if outcome is Outcome.OK:
                    outcome = Outcome.NOT_FOUND
                text = f"config blob {short}: HTTP {status} {response.reason_phrase}".rstrip()
                raise self._blob_error(progress, outcome, text, status)
            body, complete = await self._read_limited(response, progress)
        finally:
            await response.aclose()
        if complete and "sha256:" + hashlib.sha256(body).hexdigest() != digest and digest.startswith("sha256:"):
            raise self._blob_error(
                progress, Outcome.NOT_FOUND, f"config blob {short}: content does not match its digest"
            )
        via = f"via {progress.data_host}" if progress.data_host is not None else "from the registry"
        return status, f"config blob {short}: {len(body)} bytes {via}"

    async def _read_limited(self, response: httpx.Response, progress: _Progress) -> tuple[bytes, bool]:
        """At most BLOB_READ_LIMIT bytes of the body; True when that was the whole body."""
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= BLOB_READ_LIMIT:
                    length = response.headers.get("content-length", "")
                    return bytes(body[:BLOB_READ_LIMIT]), length.isdigit() and int(length) == len(body)
        except httpx.HTTPError as e:
            outcome, message = classify_exception(e, self.timeout_seconds)
            raise self._blob_error(progress, outcome, f"reading the blob: {message}") from None
        return bytes(body), True

    def _blob_error(self, progress: _Progress, outcome: Outcome, message: str, status: int | None = None) -> ProbeError:
        if progress.data_host is None:
            return ProbeError(outcome, self._scrub(message), status)
        if outcome is not Outcome.THROTTLED:
            outcome = Outcome.DATA_ENDPOINT
        return ProbeError(outcome, self._scrub(f"data endpoint {progress.data_host}: {message}"), status)

    async def _authorization(self, endpoint: str, challenge: Challenge, scope: str, *, force: bool) -> str | None:
        """The Authorization header value answering ``challenge``, or None when we have nothing to offer."""
        if challenge.scheme == "basic":
            return _basic(self._credentials) if self._credentials is not None else None
        token = await self._bearer_token(endpoint, challenge, scope, force=force)
        return f"Bearer {token}"

    # -- tokens --------------------------------------------------------------------------------

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _expiry(self, seconds: float) -> float:
        seconds = max(seconds, 0.0)
        return self._clock() + seconds - min(MAX_MARGIN_SECONDS, seconds * 0.1)

    def _fresh(self, token: _Token | None) -> bool:
        return token is not None and self._clock() < token.expires_at

    async def _bearer_token(self, endpoint: str, challenge: Challenge, scope: str, *, force: bool) -> str:
        key = (endpoint, scope)
        stale = self._tokens.get(key)
        async with self._lock(key):
            cached = self._tokens.get(key)
            # Forced (a token was refused): still reuse one that another task fetched meanwhile.
            if cached is not None and self._fresh(cached) and (not force or cached is not stale):
                return cached.value
            if self._aad is not None:
                token = await self._acr_access_token(endpoint, challenge, scope)
            else:
                token = await self._distribution_token(endpoint, challenge, scope)
            self._tokens[key] = token
            return token.value

    async def _distribution_token(self, endpoint: str, challenge: Challenge, scope: str) -> _Token:
        realm = challenge.realm
        if not realm:
            raise ProbeError(Outcome.UNAUTHORIZED, "Bearer challenge without a realm")
        params = {"scope": scope}
        if challenge.service:
            params["service"] = challenge.service
        auth = (
            httpx.BasicAuth(self._credentials.username, self._credentials.password)
            if self._credentials is not None
            else None
        )
        log.debug("fetching a registry token for %s scope %s from %s", endpoint, scope, realm)
        response = await self._send("GET", realm, params=params, auth=auth)
        body = self._token_body(response, "token endpoint")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise ProbeError(Outcome.UNAUTHORIZED, "token endpoint answered without a token", response.status_code)
        return _Token(value, self._expiry(_seconds(body.get("expires_in"), DEFAULT_TOKEN_SECONDS)))

    def _token_body(self, response: httpx.Response, what: str) -> dict[str, Any]:
        status = response.status_code
        if status != 200:
            outcome = classify_status(status)
            if outcome is Outcome.OK or status in (400, 401, 404):
                outcome = Outcome.UNAUTHORIZED
            raise ProbeError(outcome, f"{what}: {_status_text(response)}", status)
        try:
            body = response.json()
        except ValueError:
            raise ProbeError(Outcome.UNAUTHORIZED, f"{what}: answer is not JSON", status) from None
        if not isinstance(body, dict):
            raise ProbeError(Outcome.UNAUTHORIZED, f"{what}: answer is not a JSON object", status)
        return body

    async def _acr_refresh_token(self, endpoint: str, service: str, *, force: bool) -> str:
        async with self._lock((endpoint, "")):
            cached = self._refresh_tokens.get(endpoint)
            if not force and cached is not None and self._fresh(cached):
                return cached.value
            assert self._aad is not None
            try:
                aad = await self._aad.get_token(AAD_SCOPE)
            except Exception as e:
                raise ProbeError(Outcome.UNAUTHORIZED, f"Azure AD token: {type(e).__name__}") from None
            log.debug("exchanging an AAD token for an ACR refresh token at %s", endpoint)
            response = await self._send(
                "POST",
                self._url(endpoint, "/oauth2/exchange"),
                data={"grant_type": "access_token", "service": service, "access_token": aad.token},
            )
            body = self._token_body(response, "ACR token exchange")
            value = body.get("refresh_token")
            if not isinstance(value, str) or not value:
                raise ProbeError(Outcome.UNAUTHORIZED, "ACR token exchange answered without a refresh_token")
            seconds = _jwt_seconds_left(value)
            self._refresh_tokens[endpoint] = _Token(
                value, self._expiry(seconds if seconds is not None else DEFAULT_REFRESH_TOKEN_SECONDS)
            )
            return value

    async def _acr_access_token(self, endpoint: str, challenge: Challenge, scope: str) -> _Token:
        service = challenge.service or endpoint
        realm = challenge.realm or self._url(endpoint, "/oauth2/token")
        for attempt in range(2):
            refresh = await self._acr_refresh_token(endpoint, service, force=attempt > 0)
            response = await self._send(
                "POST",
                realm,
                data={"grant_type": "refresh_token", "service": service, "scope": scope, "refresh_token": refresh},
            )
            if response.status_code == 401 and attempt == 0:
                continue  # the refresh token was revoked or expired early: exchange again once
            body = self._token_body(response, "ACR token endpoint")
            value = body.get("access_token")
            if not isinstance(value, str) or not value:
                raise ProbeError(Outcome.UNAUTHORIZED, "ACR token endpoint answered without an access_token")
            seconds: float | None = _seconds(body.get("expires_in"), -1.0)
            if seconds is None or seconds < 0:
                seconds = _jwt_seconds_left(value)
            return _Token(value, self._expiry(seconds if seconds is not None else DEFAULT_TOKEN_SECONDS))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- secrets -------------------------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        """Defence in depth: no known secret survives into a message, raw, repr-escaped or base64."""
        secrets = [t.value for t in self._tokens.values()] + [t.value for t in self._refresh_tokens.values()]
        if self._credentials is not None:
            secrets += [self._credentials.password, _basic(self._credentials).removeprefix("Basic ")]
        for secret in secrets:
            forms = (
                secret,
                repr(secret)[1:-1],
                repr(secret.encode())[2:-1],
                base64.b64encode(secret.encode()).decode(),
            )
            for form in forms:
                if len(form) >= 4:
                    message = message.replace(form, "***")
        return one_line(message)


@dataclass(slots=True)
class _Progress:
    """How far a deep probe got: set once the download left the registry for another host."""

    data_host: str | None = None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"https": 443, "http": 80}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _host_of(url: httpx.URL) -> str:
    return url.host if url.port is None else f"{url.host}:{url.port}"


def _index_choice(manifests: object) -> str | None:
    """The digest of the linux/amd64 image of an index, else of its first entry."""
    if not isinstance(manifests, list):
        return None
    entries = [m for m in manifests if isinstance(m, dict) and isinstance(m.get("digest"), str)]
    for entry in entries:
        platform = entry.get("platform")
        if isinstance(platform, dict) and (platform.get("os"), platform.get("architecture")) == ("linux", "amd64"):
            return str(entry["digest"])
    return str(entries[0]["digest"]) if entries else None


def _seconds(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return float(value)


def _basic(credentials: BasicCredentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _with_auth(headers: Mapping[str, str], authorization: str | None) -> dict[str, str]:
    result = dict(headers)
    if authorization is not None:
        result["Authorization"] = authorization
    return result
