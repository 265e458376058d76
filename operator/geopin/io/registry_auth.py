"""Registry authentication: challenges, and the tokens that answer them, cached per endpoint and scope.

Every regional endpoint of a geo-replicated registry is its own authenticated surface, so challenges,
bearer tokens and ACR refresh tokens are kept per endpoint (and per scope), each until its expiry
minus a margin. Answered to the challenge of each endpoint:

- ``Bearer realm=...,service=...`` (distribution token auth): ``GET realm?service=&scope=``, with basic
  credentials when configured, anonymous otherwise; the answer's ``token`` (or ``access_token``) and
  ``expires_in`` (default 60 s).
- ``Basic``: the basic credentials.
- ACR with an Azure AD credential (workload identity): an AAD token for
  ``https://containerregistry.azure.net/.default`` is exchanged at ``POST /oauth2/exchange``
  (``grant_type=access_token``) for an ACR refresh token, which ``POST /oauth2/token``
  (``grant_type=refresh_token``) turns into a scoped access token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from geopin.io.probe_outcomes import Outcome, ProbeError, classify_status, status_text

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = ["AAD_SCOPE", "BasicCredentials", "Challenge", "TokenCache", "basic_header", "parse_challenge"]

log = logging.getLogger(__name__)

AAD_SCOPE = "https://containerregistry.azure.net/.default"
DEFAULT_TOKEN_SECONDS = 60.0
# ACR refresh tokens are JWTs with an `exp`; when one cannot be read, assume this much.
DEFAULT_REFRESH_TOKEN_SECONDS = 600.0
MAX_MARGIN_SECONDS = 30.0

Send = Callable[..., Awaitable[httpx.Response]]


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)


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


def _token_seconds(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return float(value)


def basic_header(credentials: BasicCredentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class TokenCache:
    """The Authorization header answering an endpoint's challenge, with the tokens behind it cached.

    ``send`` performs one request (raising ProbeError), ``url`` builds an endpoint's URL; both are the
    owning :class:`~geopin.io.probes.RegistryClient`'s, so tokens travel over its client and timeout.
    """

    def __init__(
        self,
        send: Send,
        url: Callable[[str, str], str],
        *,
        credentials: BasicCredentials | None,
        aad_credential: AsyncTokenCredential | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._url = url
        self._credentials = credentials
        self._aad = aad_credential
        self._clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._refresh_tokens: dict[str, _Token] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def secrets(self) -> list[str]:
        """Every secret this cache holds or sends (for scrubbing messages)."""
        found = [t.value for t in self._tokens.values()] + [t.value for t in self._refresh_tokens.values()]
        if self._credentials is not None:
            found += [self._credentials.password, basic_header(self._credentials).removeprefix("Basic ")]
        return found

    async def authorization(self, endpoint: str, challenge: Challenge, scope: str, *, force: bool) -> str | None:
        """The Authorization header value answering ``challenge``, or None when we have nothing to offer."""
        if challenge.scheme == "basic":
            return basic_header(self._credentials) if self._credentials is not None else None
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
        return _Token(value, self._expiry(_token_seconds(body.get("expires_in"), DEFAULT_TOKEN_SECONDS)))

    def _token_body(self, response: httpx.Response, what: str) -> dict[str, Any]:
        status = response.status_code
        if status != 200:
            outcome = classify_status(status)
            if outcome is Outcome.OK or status in (400, 401, 404):
                outcome = Outcome.UNAUTHORIZED
            raise ProbeError(outcome, f"{what}: {status_text(response)}", status)
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
            seconds: float | None = _token_seconds(body.get("expires_in"), -1.0)
            if seconds is None or seconds < 0:
                seconds = _jwt_seconds_left(value)
            return _Token(value, self._expiry(seconds if seconds is not None else DEFAULT_TOKEN_SECONDS))
        raise AssertionError("unreachable")  # pragma: no cover
