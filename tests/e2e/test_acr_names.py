"""The ACR-shaped names: real docker-registry replicas answering as contoso.<region>.geo.azurecr.io on
per-run loopback addresses, resolvable only inside the environment's mount namespace, their data
endpoints, and the emulated global endpoint's delayed failover."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from kubernetes import client

from tests.harness import oci
from tests.harness.acr import AcrRegistrySet
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.names import SYSTEM_HOSTS, resolves_in, resolves_outside
from tests.harness.objects import deployment
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from kubernetes.client import ApiClient

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

# Runs inside the name space: GET url with the process's default trust (SSL_CERT_FILE), print the outcome.
_FETCH = """
import json, sys, httpx
url, user, password = sys.argv[1:4]
auth = (user, password) if user else None
try:
    response = httpx.get(url, auth=auth, timeout=5)
    print(json.dumps({"status": response.status_code, "location": response.headers.get("location")}))
except httpx.HTTPError as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
"""


def fetch_inside(acr: AcrRegistrySet, url: str, *, auth: bool = False, trust_run_ca: bool = True) -> dict[str, Any]:
    user, password = acr.auth if auth else ("", "")
    env = acr.env() if trust_run_ca else None
    result = subprocess.run(
        acr.command([sys.executable, "-c", _FETCH, url, user, password]),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    fetched: dict[str, Any] = json.loads(result.stdout)
    return fetched


def pushed_image(acr: AcrRegistrySet, region: str) -> tuple[str, oci.Image]:
    repo = f"names/{uuid.uuid4().hex[:8]}"
    image = oci.build_image({"index.html": repo.encode()})
    with acr[region].client() as http:
        oci.push(http, repo, "1", image)
    return repo, image


def config_digest(image: oci.Image) -> str:
    digest: str = json.loads(image.manifest)["config"]["digest"]
    return digest


def test_names_resolve_only_inside_the_namespace(acr: AcrRegistrySet) -> None:
    assert acr.login_server == "contoso.azurecr.io"
    assert acr["eastus"].host == "contoso.eastus.geo.azurecr.io"
    assert acr["eastus"].data_host == "contoso.eastus.data.azurecr.io"
    assert len(set(acr.hosts.values())) == len(acr.hosts) == 7
    for host, ip in acr.hosts.items():
        assert ip.startswith(f"{acr.block.prefix}.")
        assert resolves_in(acr.namespace, host) == ip
        assert resolves_outside(host) != ip
    assert acr.block.prefix not in SYSTEM_HOSTS.read_text()
    # Nothing else differs inside: the system's own names still resolve the same way.
    assert resolves_in(acr.namespace, "localhost") == resolves_outside("localhost")


def test_tls_verifies_by_name_with_the_run_ca(acr: AcrRegistrySet) -> None:
    for host in (acr["westus"].host, acr.login_server):
        assert fetch_inside(acr, f"https://{host}/v2/") == {"status": 401, "location": None}
    # The system's CAs alone do not trust the run's CA: the bundle is what makes the names verify.
    untrusted = fetch_inside(acr, f"https://{acr['westus'].host}/v2/", trust_run_ca=False)
    assert untrusted["error"] == "ConnectError"
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted["message"]
    # A name is only valid on its own server: the data endpoint's certificate does not carry the
    # registry's name, so reaching it under that name fails verification.
    with (
        httpx.Client(verify=acr.ca.ssl_context(), timeout=5) as http,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        http.get(f"https://{acr['westus'].data_ip}/", extensions={"sni_hostname": acr["westus"].host})


def test_replicas_require_credentials(acr: AcrRegistrySet) -> None:
    for region in acr:
        with acr[region].client(authenticated=False) as anonymous:
            denied = anonymous.get("/v2/")
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Basic ")
        with acr[region].client() as http:
            assert http.get("/v2/").status_code == 200
        with acr[region].client(authenticated=False) as http:
            assert http.get("/v2/", auth=(acr.auth[0], "wrong")).status_code == 401
    assert fetch_inside(acr, f"https://{acr['centralus'].host}/v2/", auth=True) == {"status": 200, "location": None}


def test_blob_downloads_redirect_to_the_data_host_which_serves_without_credentials(acr: AcrRegistrySet) -> None:
    repo, image = pushed_image(acr, "eastus")
    digest = config_digest(image)
    blob_url = f"https://{acr['eastus'].host}/v2/{repo}/blobs/{digest}"
    redirected = fetch_inside(acr, blob_url, auth=True)
    assert redirected["status"] == 307
    location = httpx.URL(redirected["location"])
    assert location.host == "contoso.eastus.data.azurecr.io"
    # The data host answers the redirect target with no Authorization at all, inside the name space too.
    assert fetch_inside(acr, str(location)) == {"status": 200, "location": None}
    with acr.data["eastus"].client() as data:
        served = data.get(location.path)
    assert served.status_code == 200
    assert oci.sha256_digest(served.content) == digest
    assert [r.authorization for r in acr.data["eastus"].requests() if r.path == location.path] == [False, False]
    # Manifests are answered by the registry itself.
    with acr["eastus"].client() as http:
        assert oci.head_manifest(http, repo, "1") == image.digest


def test_data_endpoint_fault_leaves_v2_answering(acr: AcrRegistrySet) -> None:
    repo, image = pushed_image(acr, "westus")
    digest = config_digest(image)
    data = acr.data["westus"]
    try:
        data.set_mode("http_503")
        with acr["westus"].client() as http:
            assert http.get("/v2/").status_code == 200
            assert oci.head_manifest(http, repo, "1") == image.digest
            assert http.get(f"/v2/{repo}/blobs/{digest}").status_code == 307
            assert http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).status_code == 503
        data.stop()
        with acr["westus"].client() as http:
            assert http.get("/v2/").status_code == 200
            with pytest.raises(httpx.ConnectError):
                http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    finally:
        data.heal()
    with acr["westus"].client() as http:
        assert oci.get_blob(http, repo, digest)


def test_global_endpoint_fails_over_only_after_its_delay(ca: CA, acr: AcrRegistrySet, tmp_path: Path) -> None:
    delay = 4.0
    # Its own small environment: the outage and the failback below leave the session's set untouched,
    # and a second environment on the same machine gets its own addresses.
    with AcrRegistrySet(ca, ("eastus", "westus"), workdir=tmp_path, global_failover_delay=delay) as own:
        assert own.block.prefix != acr.block.prefix
        assert own.global_endpoint.failover_delay == delay
        repo, image = pushed_image(own, "eastus")
        with own["westus"].client() as http:
            oci.push(http, repo, "1", image)
        blob = f"/v2/{repo}/blobs/{config_digest(image)}"

        def served_by() -> str | None:
            """The region whose data endpoint the global name redirects a blob to; None if it fails."""
            try:
                with own.client(timeout=2) as http:
                    response = http.get(blob)
            except httpx.TransportError:
                return None
            return httpx.URL(response.headers["location"]).host.split(".")[1] if response.status_code == 307 else None

        assert own.global_endpoint.route() == "eastus"
        assert served_by() == "eastus"
        assert fetch_inside(own, f"https://{own.login_server}{blob}", auth=True)["status"] == 307

        own["eastus"].stop()
        killed = time.monotonic()
        assert served_by() is None  # the name still points at the dead replica
        wait_until(lambda: served_by() == "westus", timeout=delay + 15, interval=0.2, what="global failover")
        outage = time.monotonic() - killed
        assert outage >= delay
        assert own.global_endpoint.state()["healthy"] == {"eastus": False, "westus": True}

        own["eastus"].heal()
        recovered = time.monotonic()
        wait_until(lambda: served_by() == "eastus", timeout=delay + 15, interval=0.2, what="global failback")
        assert time.monotonic() - recovered >= delay
        assert own.global_endpoint.state()["switches"] == 2
        print(f"global endpoint: failover {outage:.1f}s after the kill (delay {delay:g}s)")


def test_operator_pins_and_fails_over_with_names_as_on_aks(
    ca: CA, control_plane: ControlPlane, kube: ApiClient, tmp_path: Path
) -> None:
    """A policy written exactly as on AKS: the global registry, replicas by region, no endpoints and no
    caBundle. geopin runs in the name space, derives contoso.<region>.geo.azurecr.io, probes over TLS
    by name, checks replication with the registry's credentials, pins, and fails over on a real kill."""
    install_crd(control_plane)
    core: Any = client.CoreV1Api(kube)
    apps: Any = client.AppsV1Api(kube)
    custom: Any = client.CustomObjectsApi(kube)
    namespace, policy_name = f"aks-{uuid.uuid4().hex[:6]}", f"aks-{uuid.uuid4().hex[:6]}"
    with AcrRegistrySet(ca, ("eastus", "westus"), workdir=tmp_path / "acr") as own:
        image = oci.build_image({"index.html": b"web\n"})
        for region in own:
            with own[region].client() as http:
                oci.push(http, "shop/web", "1", image)
        for name in ("geopin-system", namespace):
            with contextlib.suppress(client.ApiException):
                core.create_namespace({"metadata": {"name": name}})
        auth = base64.b64encode(":".join(own.auth).encode()).decode()
        config = json.dumps({"auths": {own.login_server: {"auth": auth}}})
        secret = {
            "metadata": {"name": policy_name},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        }
        core.create_namespaced_secret("geopin-system", secret)
        policy = {
            "apiVersion": "geopin.io/v1alpha1",
            "kind": "RegistryPolicy",
            "metadata": {"name": policy_name},
            "spec": {
                "registry": "contoso.azurecr.io",
                "region": "eastus",
                "replicas": [{"region": "eastus"}, {"region": "westus"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "credentials": {"secretRef": {"namespace": "geopin-system", "name": policy_name}},
            },
        }

        def image_of() -> str:
            return str(apps.read_namespaced_deployment("web", namespace).spec.template.spec.containers[0].image)

        with Operator(control_plane, tmp_path, names=own):
            custom.create_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", policy)
            try:
                apps.create_namespaced_deployment(namespace, deployment("web", "contoso.azurecr.io/shop/web:1"))
                wait_until(lambda: image_of() == "contoso.eastus.geo.azurecr.io/shop/web:1", timeout=60, what="pinned")
                own["eastus"].stop()
                wait_until(
                    lambda: image_of() == "contoso.westus.geo.azurecr.io/shop/web:1", timeout=60, what="failover"
                )

                def status() -> dict[str, Any]:
                    got = custom.get_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", policy_name)
                    return dict(got.get("status", {}))

                # The status loop reports the switch within seconds of the rewrite.
                reported = wait_until(
                    lambda: (s := status()).get("activeEndpoint") == own["westus"].host and s,
                    timeout=30,
                    what="status names the westus host",
                )
                endpoints = {r["region"]: r["endpoint"] for r in reported["replicas"]}
                assert endpoints == {"eastus": own["eastus"].host, "westus": own["westus"].host}
            finally:
                custom.delete_cluster_custom_object("geopin.io", "v1alpha1", "registrypolicies", policy_name)
                core.delete_namespace(namespace)
                core.delete_namespaced_secret(policy_name, "geopin-system")
