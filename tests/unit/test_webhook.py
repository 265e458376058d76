"""The admission webhook's HTTP edge: big, oversized and malformed AdmissionReviews are answered correctly.

A real WebhookServer (aiohttp, TLS with its self-signed certificate) on a loopback port, and a real
HTTP client: what the API server sends is bytes, and how many of them the server accepts is the point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import httpx
import pytest

from geopin.core.decisions import PolicySnapshot
from geopin.core.policy import from_spec
from geopin.io import metrics
from geopin.io.webhook import MAX_REVIEW_BYTES, PATH, WebhookServer
from tests.harness.procs import free_port

POLICY = from_spec(
    "contoso",
    {"registry": "contoso.azurecr.io", "mode": "Admission", "replicas": [{"region": "eastus"}, {"region": "westus"}]},
)
SNAPSHOT = PolicySnapshot(policy=POLICY, cluster_region="eastus", usable=frozenset({"eastus", "westus"}))


def review(uid: str, padding: int = 0) -> dict[str, Any]:
    """An AdmissionReview of a Pod CREATE, padded with an environment variable of ``padding`` bytes."""
    container: dict[str, Any] = {"name": "web", "image": "contoso.azurecr.io/shop/web:1"}
    if padding:
        container["env"] = [{"name": "BLOB", "value": "x" * padding}]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"containers": [container]}},
        },
    }


def invalid_reviews(reason: str) -> float:
    return metrics.registry.get_sample_value("geopin_admission_invalid_reviews_total", {"reason": reason}) or 0.0


async def exchange(bodies: list[bytes]) -> list[dict[str, Any]]:
    port = free_port()
    server = WebhookServer(port, lambda: [SNAPSHOT], lambda namespace: {}, address="127.0.0.1")
    await server.start()
    try:
        verify = ssl.create_default_context(cadata=server.ca_pem.decode())
        async with httpx.AsyncClient(verify=verify, timeout=30) as client:
            answers = []
            for body in bodies:
                response = await client.post(
                    f"https://localhost:{port}{PATH}", content=body, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
            return answers
    finally:
        await server.stop()


def test_a_pod_larger_than_aiohttps_default_limit_is_mutated() -> None:
    """A 2 MiB Pod fits the API server's limits (3 MiB per request): it is pinned like any other."""
    (answer,) = asyncio.run(exchange([json.dumps(review("u-big", padding=2 << 20)).encode()]))
    response = answer["response"]
    assert response["uid"] == "u-big"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"


@pytest.mark.parametrize(
    ("body", "uid", "reason"),
    [
        (json.dumps(review("u-huge", padding=MAX_REVIEW_BYTES)).encode(), "u-huge", "too_large"),
        (json.dumps(review("u-cut"))[:-40].encode(), "u-cut", "malformed"),
        (b'{"apiVersion": "admission.k8s.io/v1", "request": ["not", "an", "object"]}', "", "malformed"),
        (b"\xff\xfe not even text", "", "malformed"),
    ],
    ids=["oversized", "truncated", "request-not-an-object", "not-text"],
)
def test_an_unreadable_review_is_answered_with_its_uid_and_counted(body: bytes, uid: str, reason: str) -> None:
    before = invalid_reviews(reason)
    (answer,) = asyncio.run(exchange([body]))
    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True},
    }
    assert invalid_reviews(reason) == before + 1


def test_a_burst_of_unreadable_reviews_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geopin.io.webhook")
    bodies = [json.dumps(review(f"u-{i}"))[:-10].encode() for i in range(5)]
    answers = asyncio.run(exchange(bodies))
    assert [a["response"]["uid"] for a in answers] == [f"u-{i}" for i in range(5)]
    lines = [r for r in caplog.records if r.name == "geopin.io.webhook" and r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None  # one line, no traceback
    assert "malformed" in lines[0].getMessage()
