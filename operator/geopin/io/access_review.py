"""Who may read a non-resource URL such as ``/metrics``: the API server decides, geopin remembers briefly.

This is kubebuilder's secure-metrics convention (controller-runtime's ``filters.WithAuthenticationAndAuthorization``):
a bearer token is authenticated with a ``TokenReview``, then the user it names is authorized with a
``SubjectAccessReview`` for ``get`` on the non-resource URL. No token or a token the API server does not
accept is 401, a user without the permission is 403. Grant it by binding the chart's
``<release>-metrics-reader`` ClusterRole (``nonResourceURLs: ["/metrics"], verbs: ["get"]``).

Decisions are cached with controller-runtime's lifetimes (a token's user for 1 minute, an allow for
5 minutes, a deny for 30 seconds), so a Prometheus that scrapes every 15 s costs about one TokenReview a
minute and one SubjectAccessReview every 5 minutes. Tokens are kept only as SHA-256 digests, and the
caches are bounded, so a flood of made-up tokens costs reviews but not memory.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["AccessDecision", "AccessReviewer", "ReviewCacheSettings", "TtlCache", "UserInfo"]

logger = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire; the least recently stored entry goes first when it is full."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class UserInfo:
    """``status.user`` of a TokenReview, hashable so that it can key the authorization cache."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_status(cls, user: dict[str, Any]) -> UserInfo:
        extra = user.get("extra") or {}
        return cls(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(user.get("groups") or ()),
            extra=tuple(sorted((k, tuple(v or ())) for k, v in extra.items())),
        )


_NOT_AUTHENTICATED = UserInfo(username="")  # cached for a token the API server refused


@dataclass(frozen=True)
class AccessDecision:
    status: int  # 200 allowed, 401 not authenticated, 403 not authorized, 500 the review itself failed
    reason: str
    user: str = ""


Post = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class ReviewCacheSettings:
    """How long decisions are remembered (controller-runtime's lifetimes) and how many."""

    token_seconds: float = 60.0  # a token's user
    allow_seconds: float = 300.0
    deny_seconds: float = 30.0  # a refused token, or a user without the permission
    max_entries: int = 1024  # per cache


class AccessReviewer:
    """Authenticate a bearer token and authorize ``verb`` on ``path`` for its user, through the API server."""

    def __init__(
        self,
        post: Post,
        *,
        path: str = "/metrics",
        verb: str = "get",
        cache: ReviewCacheSettings = ReviewCacheSettings(),  # frozen: one shared default is fine
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.post = post
        self.path = path
        self.verb = verb
        self.cache = cache
        self._users: TtlCache[str, UserInfo] = TtlCache(cache.max_entries, clock)
        self._decisions: TtlCache[UserInfo, bool] = TtlCache(cache.max_entries, clock)
        self.reviews = 0  # API calls made, for the tests and the debug log

    async def check(self, authorization: str | None) -> AccessDecision:
        """The decision for one request, from its ``Authorization`` header."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return AccessDecision(401, "a bearer token is required")
        try:
            user = await self._authenticate(token)
        except Exception as e:  # the API server is unreachable or refuses geopin's own review
            logger.warning("%s: TokenReview failed: %s", self.path, e)
            return AccessDecision(401, "the token could not be reviewed")
        if user is None:
            return AccessDecision(401, "the token is not valid")
        try:
            allowed = await self._authorize(user)
        except Exception as e:
            logger.warning("%s: SubjectAccessReview for %s failed: %s", self.path, user.username, e)
            return AccessDecision(500, f"authorization of {user.username} failed", user.username)
        if not allowed:
            return AccessDecision(403, f"{user.username} may not {self.verb} {self.path}", user.username)
        return AccessDecision(200, "allowed", user.username)

    async def _authenticate(self, token: str) -> UserInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._users.get(key)
        if cached is not None:
            return None if cached is _NOT_AUTHENTICATED else cached
        self.reviews += 1
        review = await self.post(
            TOKEN_REVIEWS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            self._users.put(key, _NOT_AUTHENTICATED, self.cache.deny_seconds)
            return None
        user = UserInfo.from_status(status.get("user") or {})
        self._users.put(key, user, self.cache.token_seconds)
        return user

    async def _authorize(self, user: UserInfo) -> bool:
        cached = self._decisions.get(user)
        if cached is not None:
            return cached
        self.reviews += 1
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": self.path, "verb": self.verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        review = await self.post(
            SUBJECT_ACCESS_REVIEWS,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        allowed = bool(((review or {}).get("status") or {}).get("allowed"))
        self._decisions.put(user, allowed, self.cache.allow_seconds if allowed else self.cache.deny_seconds)
        return allowed
