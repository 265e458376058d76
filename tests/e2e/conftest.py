"""Session fixtures for end-to-end tests: one CA, one control plane, three registry replicas per run.

    ca             tests.harness.pki.CA: .cert_path, .ssl_context(), .issue_server(...)
    control_plane  tests.harness.controlplane.ControlPlane: .url, .kubeconfig, .api_client(),
                   .set_node_regions(...), .audit_line_count(), .audit_writes(...)
    registries     tests.harness.registries.RegistrySet: registries["eastus"].endpoint, .url, .client(),
                   .pause()/.resume()/.stop()/.restart()
    fault_registry registries["centralus"], healed (resumed/restarted) after the test whatever happened
    kube           a kubernetes.client.ApiClient for the admin, closed after the test

Every process is stopped at the end of the session, on failure too (the fixtures yield inside `with`),
and attached processes die with pytest even if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.pki import CA
from tests.harness.registries import Registry, RegistrySet

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kubernetes.client import ApiClient


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def control_plane(ca: CA) -> Iterator[ControlPlane]:
    with ControlPlane(ca=ca) as cp:
        yield cp


@pytest.fixture(scope="session")
def registries(ca: CA) -> Iterator[RegistrySet]:
    with RegistrySet(ca) as regs:
        yield regs


@pytest.fixture
def fault_registry(registries: RegistrySet) -> Iterator[Registry]:
    registry = registries["centralus"]
    try:
        yield registry
    finally:
        registry.heal()


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[ApiClient]:
    with control_plane.api_client() as api:
        yield api
