"""The secure-metrics decision (pure logic over a recorded API): 401/403/200, and how long each is remembered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from geopin.io.access_review import SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS, AccessReviewer, TtlCache

READER = {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u-1", "groups": ["system:serviceaccounts"]}


class FakeApi:
    """Answers TokenReviews from a token table and SubjectAccessReviews from a set of allowed users."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {"reader-token": READER, "other-token": {"username": "bob"}}
        self.allowed = {READER["username"]}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: str | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((path, body))
        if self.fail == path:
            raise ConnectionError("API server unreachable")
        if path == TOKEN_REVIEWS:
            user = self.tokens.get(body["spec"]["token"])
            return {"status": {"authenticated": True, "user": user} if user else {"authenticated": False}}
        assert path == SUBJECT_ACCESS_REVIEWS
        return {"status": {"allowed": body["spec"]["user"] in self.allowed}}

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[AccessReviewer, FakeApi, Clock]:
    api, clock = FakeApi(), Clock()
    return AccessReviewer(api.post, clock=clock), api, clock


def check(reviewer: AccessReviewer, header: str | None) -> tuple[int, str]:
    decision = asyncio.run(reviewer.check(header))
    return decision.status, decision.user


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "reader-token"])
def test_no_bearer_token_is_401_without_an_api_call(header: str | None) -> None:
    reviewer, api, _ = make()
    assert check(reviewer, header) == (401, "")
    assert api.calls == []


def test_an_unknown_token_is_401() -> None:
    reviewer, api, _ = make()
    assert check(reviewer, "Bearer made-up") == (401, "")
    assert api.count(TOKEN_REVIEWS) == 1
    assert api.count(SUBJECT_ACCESS_REVIEWS) == 0


def test_an_authorized_user_is_200_and_the_review_asks_for_get_on_metrics() -> None:
    reviewer, api, _ = make()
    assert check(reviewer, "Bearer reader-token") == (200, READER["username"])
    review = next(body for path, body in api.calls if path == SUBJECT_ACCESS_REVIEWS)
    assert review["spec"] == {
        "user": READER["username"],
        "uid": "u-1",
        "groups": ["system:serviceaccounts"],
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
    }
    assert next(body for path, body in api.calls if path == TOKEN_REVIEWS)["spec"] == {"token": "reader-token"}


def test_an_authenticated_user_without_the_permission_is_403() -> None:
    reviewer, _, _ = make()
    assert check(reviewer, "Bearer other-token") == (403, "bob")


def test_a_scrape_every_15_seconds_costs_a_token_review_a_minute_and_an_access_review_every_5_minutes() -> None:
    reviewer, api, clock = make()
    for _ in range(40):  # 10 minutes of scrapes
        assert check(reviewer, "Bearer reader-token")[0] == 200
        clock.now += 15
    assert api.count(TOKEN_REVIEWS) == 10
    assert api.count(SUBJECT_ACCESS_REVIEWS) == 2
    assert reviewer.reviews == 12


def test_denials_are_remembered_for_30_seconds_only() -> None:
    reviewer, api, clock = make()
    assert check(reviewer, "Bearer other-token")[0] == 403
    clock.now += 29
    assert check(reviewer, "Bearer other-token")[0] == 403
    assert api.count(SUBJECT_ACCESS_REVIEWS) == 1
    api.allowed.add("bob")  # a ClusterRoleBinding was created meanwhile
    clock.now += 1
    assert check(reviewer, "Bearer other-token") == (200, "bob")
    assert check(reviewer, "Bearer made-up")[0] == 401
    clock.now += 29
    assert check(reviewer, "Bearer made-up")[0] == 401
    assert api.count(TOKEN_REVIEWS) == 2  # other-token's user (kept 60 s) and made-up's refusal
    clock.now += 1
    assert check(reviewer, "Bearer made-up")[0] == 401
    assert api.count(TOKEN_REVIEWS) == 3  # a refused token is reviewed again after 30 s


def test_failed_reviews_are_not_cached() -> None:
    reviewer, api, _ = make()
    api.fail = TOKEN_REVIEWS
    assert check(reviewer, "Bearer reader-token")[0] == 401
    api.fail = SUBJECT_ACCESS_REVIEWS
    assert check(reviewer, "Bearer reader-token")[0] == 500
    api.fail = None
    assert check(reviewer, "Bearer reader-token")[0] == 200
    assert api.count(TOKEN_REVIEWS) == 2  # the failed one and the one that worked
    assert api.count(SUBJECT_ACCESS_REVIEWS) == 2


def test_tokens_are_kept_only_as_digests() -> None:
    reviewer, _, _ = make()
    check(reviewer, "Bearer reader-token")
    assert "reader-token" not in repr(reviewer._users._entries)


def test_the_cache_is_bounded() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(3, clock)
    for i in range(5):
        cache.put(f"k{i}", i, ttl=10)
    assert len(cache) == 3
    assert [cache.get(f"k{i}") for i in range(5)] == [None, None, 2, 3, 4]
    clock.now += 10
    assert cache.get("k4") is None
