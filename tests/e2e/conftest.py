"""Session fixtures for end-to-end tests: one CA, one control plane, three registry replicas per run.

    ca             tests.harness.pki.CA: .cert_path, .ssl_context(), .issue_server(...)
    control_plane  tests.harness.controlplane.ControlPlane: .url, .kubeconfig, .api_client(),
                   .set_node_regions(...), .audit_line_count(), .audit_writes(...)
    registries     tests.harness.registries.RegistrySet: registries["eastus"].endpoint, .url, .client(),
                   .pause()/.resume()/.stop()/.restart()
    fault_registry registries["centralus"], healed (resumed/restarted) after the test whatever happened
    acr            tests.harness.acr.AcrRegistrySet (root only): ACR-shaped replicas on per-run loopback
                   addresses, their data endpoints, the global endpoint, the name space they resolve in;
                   acr["eastus"].host/.ip/.data_host, acr.auth, acr.command(argv), acr.env(), acr.heal()
    kube           a kubernetes.client.ApiClient for the admin, closed after the test
    map_api_server parametrized: how to start an API server that serves MutatingAdmissionPolicy as
                   v1beta1 (Kubernetes 1.35, feature gate) and as v1 (1.36, GA): .api_version,
                   .binaries, .apiserver_args for ControlPlane(binaries=..., extra_apiserver_args=...)
    node_env       tests.harness.nodeenv.NodeEnvironment (root only): a second control plane, with
                   kube-scheduler, and one real node (containerd + kubelet, aks-nodepool1-0, eastus,
                   the 202607.29 credential provider list) in `acr`'s name space; .start_node(...),
                   .push_pod_image(...), .mounts(). Only tests marked `nodes` use it: the rest of the
                   suite keeps the node-less control plane above.
    node_kube      an ApiClient for node_env's control plane
    extra_nodes    start_node(name, region="eastus", credential_provider=...) for one test; every
                   node it started is stopped after the test
    short_dir      short_dir("name"): a new directory /tmp/gp-name-XXXXXXXX, removed at the end of
                   the session: for node directories, whose unix sockets must stay under the
                   kernel's 108 bytes (pytest-xdist adds popen-gwN/ to every temp path)

Every process is stopped at the end of the session, on failure too (the fixtures yield inside `with`),
and attached processes die with pytest even if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from tests.harness.acr import AcrRegistrySet
from tests.harness.controlplane import MAP_BETA_APISERVER_ARGS, ControlPlane, binaries_1_36, find_binaries
from tests.harness.names import NamesError
from tests.harness.nodeenv import NodeEnvironment
from tests.harness.nodes import Node
from tests.harness.pki import CA
from tests.harness.registries import Registry, RegistrySet

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from kubernetes.client import ApiClient


class MapApiServer(NamedTuple):
    api_version: str  # the MutatingAdmissionPolicy version it serves
    binaries: Path
    apiserver_args: tuple[str, ...]


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def control_plane(ca: CA) -> Iterator[ControlPlane]:
    with ControlPlane(ca=ca) as cp:
        yield cp


@pytest.fixture(scope="session", params=["v1beta1", "v1"], ids=["v1beta1-k8s1.35", "v1-k8s1.36"])
def map_api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MapApiServer:
    """An API server that serves MutatingAdmissionPolicy: 1.35 with the beta on, and 1.36 (GA)."""
    if request.param == "v1beta1":
        return MapApiServer("admissionregistration.k8s.io/v1beta1", find_binaries(), MAP_BETA_APISERVER_ARGS)
    return MapApiServer("admissionregistration.k8s.io/v1", binaries_1_36(tmp_path_factory.mktemp("bin-1.36")), ())


@pytest.fixture(scope="session")
def registries(ca: CA) -> Iterator[RegistrySet]:
    with RegistrySet(ca) as regs:
        yield regs


# Short enough for a test to wait out, long enough to see pulls through the global endpoint fail first.
GLOBAL_FAILOVER_DELAY = 15.0


@pytest.fixture(scope="session")
def acr(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcrRegistrySet]:
    try:
        acr_set = AcrRegistrySet(
            ca, workdir=tmp_path_factory.mktemp("acr"), global_failover_delay=GLOBAL_FAILOVER_DELAY
        )
    except NamesError as error:
        pytest.fail(str(error), pytrace=False)
    with acr_set:
        yield acr_set


# Longest first (measured, one process): pytest-xdist hands whole files to its workers in collection
# order, so a long file collected late would run alone at the end while the other worker idles.
LONGEST_FIRST = (
    "test_image.py",
    "test_install_local.py",
    "test_bench_smoke.py",
    "test_split_brain.py",
    "test_demo.py",
    "test_redirect.py",
    "test_soak_smoke.py",
    "test_bench_pods_smoke.py",
    "test_real_pulls.py",
    "test_failover.py",
    "test_data_endpoint.py",
    "test_arm_discovery.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest end-to-end files first, the other files after them in their order, the unit tests last."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), "e2e" not in item.path.parts))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nodes: needs real nodes (containerd + kubelet, root): the node_env fixture")


@pytest.fixture(scope="session")
def short_dir() -> Iterator[Callable[[str], Path]]:
    made: list[Path] = []

    def make(name: str) -> Path:
        # A real directory, not a symlink into pytest's temp dir: the kubelet resolves symlinks
        # before it binds its sockets, and under pytest-xdist those paths pass 108 bytes.
        directory = Path(tempfile.mkdtemp(prefix=f"gp-{name}-", dir="/tmp"))
        made.append(directory)
        return directory

    try:
        yield make
    finally:
        mounted = _mount_points()
        for directory in made:
            # A mount left below (a failed node cleanup) keeps its directory for inspection: rmtree
            # would descend into the mounted filesystem.
            if not any(point == directory or directory in point.parents for point in mounted):
                shutil.rmtree(directory, ignore_errors=True)


def _mount_points() -> list[Path]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [Path(line.split()[4]) for line in mountinfo]


@pytest.fixture(scope="session")
def node_env(ca: CA, acr: AcrRegistrySet, short_dir: Callable[[str], Path]) -> Iterator[NodeEnvironment]:
    with NodeEnvironment(ca, acr, workdir=short_dir("nodes")) as env:
        yield env


@pytest.fixture
def node_kube(node_env: NodeEnvironment) -> Iterator[ApiClient]:
    with node_env.control_plane.api_client() as api:
        yield api


@pytest.fixture
def extra_nodes(node_env: NodeEnvironment) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start_node(*args: Any, **kwargs: Any) -> Node:
        node = node_env.start_node(*args, **kwargs)
        started.append(node)
        return node

    try:
        yield start_node
    finally:
        # A node that fails to stop is stopped again with node_env at the end of the session.
        for node in started:
            node_env.remove_node(node)


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
