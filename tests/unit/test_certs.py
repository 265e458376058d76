"""The webhook's shared serving pair (geopin.io.certs.shared_certificate) against a FakeKube."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cryptography import x509

from geopin.io.certs import SharedCertificateError, shared_certificate
from tests.unit.fakekube import FakeKube

HOSTS = ("geopin.geopin-system.svc", "geopin.geopin-system.svc.cluster.local", "geopin.geopin-system")
PATH = "/api/v1/namespaces/geopin-system/secrets/geopin-webhook-tls"


def shared(kube: FakeKube) -> object:
    return asyncio.run(shared_certificate(kube, "geopin-system", "geopin-webhook-tls", HOSTS))


def test_the_first_replica_makes_the_secret_and_the_next_serves_the_same_pair() -> None:
    kube = FakeKube()
    first = shared(kube)
    assert kube.count("POST") == 1
    stored = kube.objects[PATH]
    assert stored["type"] == "kubernetes.io/tls"
    assert set(stored["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    second = shared(kube)
    assert second == first
    assert kube.count("POST") == 1  # read, not made again
    cert = x509.load_pem_x509_certificate(first.cert_pem)  # type: ignore[attr-defined]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == set(HOSTS)


def test_a_replica_that_loses_the_race_serves_the_winners_pair() -> None:
    kube = FakeKube()
    winner = FakeKube()
    won = shared(winner)
    # The other replica's Secret lands between this one's GET (404) and its POST (409).
    theirs = {**winner.objects[PATH], "metadata": {"name": "geopin-webhook-tls", "namespace": "geopin-system"}}

    def theirs_lands() -> None:
        kube.add(theirs)

    kube.before("POST", "/api/v1/namespaces/geopin-system/secrets", theirs_lands)
    assert shared(kube) == won


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"tls.crt": base64.b64encode(b"x").decode()}, "no tls.crt and tls.key"),
        ({"tls.crt": "%%%", "tls.key": "%%%"}, "not base64"),
    ],
)
def test_an_unusable_secret_is_named_with_what_to_do(data: dict[str, str], says: str) -> None:
    kube = FakeKube()
    kube.add({"kind": "Secret", "metadata": {"name": "geopin-webhook-tls", "namespace": "geopin-system"}, "data": data})
    with pytest.raises(SharedCertificateError, match=says) as raised:
        shared(kube)
    assert "geopin-system/geopin-webhook-tls" in str(raised.value)
    assert kube.count("POST") == 0  # never overwritten: someone may have put it there on purpose


def test_a_refused_read_names_the_permission() -> None:
    kube = FakeKube()
    kube.fail("GET", PATH, 403)
    with pytest.raises(SharedCertificateError, match="HTTP 403; check geopin's RBAC"):
        shared(kube)
