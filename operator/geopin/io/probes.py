"""Registry probes: is a regional endpoint serving, and does it have the canary image?

One :class:`RegistryClient` per policy holds one ``httpx.AsyncClient`` (HTTP/1.1), what it learnt of
each endpoint (its challenge, the canary's config digest) and a :class:`~geopin.io.registry_auth.TokenCache`
for the tokens. What a probe can find is :mod:`geopin.io.probe_outcomes`; how it authenticates is
:mod:`geopin.io.registry_auth`.

Deep probe (with a canary image): a manifest ``HEAD``; the manifest itself is read once per digest
(an index is followed to one image) to learn the config blob's digest; then ``GET`` of that blob,
following the registry's redirect by hand and reading at most ``BLOB_READ_LIMIT`` bytes. The
redirect's target gets no ``Authorization`` header when it is another origin (ACR's data URLs are
pre-signed, and a registry token must not leak to another host). httpx would drop the header too
(except for an http→https upgrade of the same host), but the rule is geopin's, so it is written here.

Passwords and tokens never appear in a message, an exception, a repr or a log line, in any encoding
(see :mod:`geopin.io.probe_outcomes`); :meth:`RegistryClient._scrub` is the defence in depth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from geopin import __version__
from geopin.core.references import InvalidReference, parse
from geopin.core.text import one_line
from geopin.io.probe_outcomes import (
    Outcome,
    ProbeError,
    ProbeResult,
    classify_exception,
    classify_status,
    status_text,
)
from geopin.io.registry_auth import (
    AAD_SCOPE,
    BasicCredentials,
    Challenge,
    TokenCache,
    parse_challenge,
)

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

# The probe's whole vocabulary stays importable from here.
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

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
# A deep probe reads at most this much of the canary's config blob: enough to prove the download
# path works, never a real layer's worth of traffic per probe.
BLOB_READ_LIMIT = 64 * 1024
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
INDEX_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_DIGEST_HEADER_RE = re.compile(r"sha(?:256|384|512):[0-9a-f]{64,128}")


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
        self._auth = TokenCache(
            self._send, self._url, credentials=credentials, aad_credential=aad_credential, clock=clock
        )

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
        return status, outcome, f"GET /v2/: {status_text(response)}"

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
        return f"manifest {image}: {status_text(response)}"

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
        authorization = await self._auth.authorization(endpoint, known, scope, force=False) if known else None
        response = await self._send(method, url, headers=_with_auth(base, authorization), **options)
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers)
        self._challenges[endpoint] = challenge
        if challenge is None:
            return response
        retry = await self._auth.authorization(endpoint, challenge, scope, force=authorization is not None)
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

    # -- secrets -------------------------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        """Defence in depth: no known secret survives into a message, raw, repr-escaped or base64."""
        for secret in self._auth.secrets():
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


def _with_auth(headers: Mapping[str, str], authorization: str | None) -> dict[str, str]:
    result = dict(headers)
    if authorization is not None:
        result["Authorization"] = authorization
    return result
