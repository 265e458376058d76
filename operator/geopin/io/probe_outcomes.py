"""What a registry probe found, in one word and one secret-free line.

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

Messages are built from outcome classes, errno texts, standard HTTP reason phrases and validated
header values, never from an exception's or a server's free text (h11 quotes the repr of a header
value it refuses, and a registry that received a token could echo it).
"""

from __future__ import annotations

import enum
import http
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx

from geopin.core.text import one_line

__all__ = ["Outcome", "ProbeError", "ProbeResult", "classify_exception", "classify_status", "status_text"]

E = TypeVar("E", bound=BaseException)


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


def status_text(response: httpx.Response) -> str:
    """``HTTP 503 Service Unavailable``: the standard reason phrase, never the one the server sent."""
    status = response.status_code
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"
