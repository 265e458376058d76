"""Real OCI images built in pure Python, pushed and read with httpx over the distribution API."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import ssl
    from collections.abc import Collection, Mapping, Sequence

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])


class RegistryAPIError(RuntimeError):
    def __init__(self, response: httpx.Response, what: str) -> None:
        super().__init__(f"{what}: HTTP {response.status_code} {response.text[:500]}")
        self.status_code = response.status_code


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Image:
    """A manifest and every blob it references, keyed by digest."""

    manifest: bytes
    media_type: str = OCI_MANIFEST
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def build_image(
    files: Mapping[str, bytes] | None = None,
    *,
    architecture: str = "amd64",
    entrypoint: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    executables: Collection[str] = (),
) -> Image:
    """A one-layer linux image holding `files` (path -> content); same input, same digest.

    Without `entrypoint` the image only carries data (its Cmd names a text file); with it, the image
    runs `entrypoint` with `env`, and the paths in `executables` get mode 0755.
    """
    files = files if files is not None else {"hello.txt": b"hello from geopin\n"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o755 if path in executables else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    run: dict[str, Any] = {"Cmd": ["/hello.txt"]}
    if entrypoint is not None:
        run = {"Entrypoint": list(entrypoint), "Env": [f"{k}={v}" for k, v in sorted((env or {}).items())]}
    config = _canonical_json(
        {
            "architecture": architecture,
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
        }
    )
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}],
        }
    )
    return Image(manifest=manifest, blobs={sha256_digest(config): config, sha256_digest(layer): layer})


def layout_archive(image: Image, name: str) -> bytes:
    """`image` as an OCI image layout in a tar, named `name` for `ctr images import`."""

    def add(tar: tarfile.TarFile, path: str, data: bytes) -> None:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))

    descriptor = {
        "mediaType": image.media_type,
        "digest": image.digest,
        "size": len(image.manifest),
        # containerd names an imported image after this annotation.
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}))
        add(tar, "index.json", _canonical_json({"schemaVersion": 2, "manifests": [descriptor]}))
        for digest, data in sorted({**image.blobs, image.digest: image.manifest}.items()):
            add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return raw.getvalue()


# -- low level: an httpx.Client whose base_url is the registry -----------------------------------


def registry_client(
    endpoint: str,
    *,
    verify: ssl.SSLContext | bool = True,
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> httpx.Client:
    """`endpoint` is "host:port" (HTTPS assumed) or a full URL."""
    base = endpoint if "://" in endpoint else f"https://{endpoint}"
    return httpx.Client(base_url=base, verify=verify, timeout=timeout, auth=httpx.BasicAuth(*auth) if auth else None)


def blob_exists(client: httpx.Client, repo: str, digest: str) -> bool:
    response = client.head(f"/v2/{repo}/blobs/{digest}")
    if response.status_code == 404:
        return False
    # 307: the registry redirects blob reads to its data endpoint (ACR, and the ACR-shaped replicas).
    if response.status_code not in (200, 307):
        raise RegistryAPIError(response, f"HEAD blob {repo}@{digest}")
    return True


def get_blob(client: httpx.Client, repo: str, digest: str) -> bytes:
    response = client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    if response.status_code != 200:
        raise RegistryAPIError(response, f"GET blob {repo}@{digest}")
    if sha256_digest(response.content) != digest:
        raise RuntimeError(f"blob {repo}@{digest} arrived with a different digest")
    return response.content


def push_blob(client: httpx.Client, repo: str, data: bytes, *, monolithic: bool = False) -> str:
    """Upload `data` unless present: POST then PUT the whole blob, or try a single POST with `monolithic`."""
    digest = sha256_digest(data)
    if blob_exists(client, repo, digest):
        return digest
    headers = {"Content-Type": "application/octet-stream"}
    if monolithic:
        # The single-request form of the spec; registries may ignore it and answer 202 (distribution
        # 2.8 does), in which case the PUT below completes the upload.
        started = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data, headers=headers)
        if started.status_code == 201:
            return digest
    else:
        started = client.post(f"/v2/{repo}/blobs/uploads/")
    if started.status_code != 202:
        raise RegistryAPIError(started, f"start upload {repo}")
    location = client.base_url.join(started.headers["Location"])
    location = location.copy_merge_params({"digest": digest})
    finished = client.put(location, content=data, headers=headers)
    if finished.status_code != 201:
        raise RegistryAPIError(finished, f"finish upload {repo}@{digest}")
    return digest


def put_manifest(client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str) -> str:
    response = client.put(f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    if response.status_code != 201:
        raise RegistryAPIError(response, f"PUT manifest {repo}:{reference}")
    return response.headers.get("Docker-Content-Digest") or sha256_digest(body)


def get_manifest(client: httpx.Client, repo: str, reference: str) -> tuple[bytes, str] | None:
    """(body, media type), or None when the registry has no such manifest."""
    response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise RegistryAPIError(response, f"GET manifest {repo}:{reference}")
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if not media_type:
        media_type = json.loads(response.content).get("mediaType", OCI_MANIFEST)
    return response.content, media_type


def head_manifest(client: httpx.Client, repo: str, reference: str) -> str | None:
    """The Docker-Content-Digest of `repo:reference`, or None on 404."""
    response = client.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise RegistryAPIError(response, f"HEAD manifest {repo}:{reference}")
    return response.headers["Docker-Content-Digest"]


def catalog(client: httpx.Client) -> list[str]:
    """Every repository, following the Link header's pagination."""
    repos: list[str] = []
    url: str | httpx.URL = "/v2/_catalog?n=1000"
    while True:
        response = client.get(url)
        if response.status_code != 200:
            raise RegistryAPIError(response, "GET /v2/_catalog")
        repos.extend(response.json().get("repositories") or [])
        next_link = response.links.get("next", {}).get("url")
        if not next_link:
            return repos
        url = client.base_url.join(next_link)


def tags(client: httpx.Client, repo: str) -> list[str]:
    response = client.get(f"/v2/{repo}/tags/list")
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise RegistryAPIError(response, f"GET tags {repo}")
    return list(response.json().get("tags") or [])


def referenced_digests(manifest: bytes) -> tuple[list[str], list[str]]:
    """(blob digests, child manifest digests) that a manifest or index points at."""
    doc = json.loads(manifest)
    blobs = [doc["config"]["digest"]] if "config" in doc else []
    blobs += [layer["digest"] for layer in doc.get("layers", [])]
    children = [entry["digest"] for entry in doc.get("manifests", [])]
    return blobs, children


# -- high level -----------------------------------------------------------------------------------


def push(client: httpx.Client, repo: str, tag: str, image: Image, *, monolithic: bool = False) -> str:
    """Push every blob, then the manifest under `tag`; returns the manifest digest."""
    for data in image.blobs.values():
        push_blob(client, repo, data, monolithic=monolithic)
    return put_manifest(client, repo, tag, image.manifest, image.media_type)


def push_image(
    endpoint: str,
    repo: str,
    tag: str,
    image: Image | None = None,
    *,
    verify: ssl.SSLContext | bool = True,
    auth: tuple[str, str] | None = None,
    monolithic: bool = False,
) -> str:
    """Push `image` (a fresh default one if None) to `endpoint` as `repo:tag`; returns its digest."""
    with registry_client(endpoint, verify=verify, auth=auth) as client:
        return push(client, repo, tag, image or build_image(), monolithic=monolithic)


def manifest_digest(
    endpoint: str,
    repo: str,
    tag: str,
    *,
    verify: ssl.SSLContext | bool = True,
    auth: tuple[str, str] | None = None,
    timeout: float = 5.0,
) -> str | None:
    """HEAD the manifest: its digest, or None if the registry does not have `repo:tag`."""
    with registry_client(endpoint, verify=verify, auth=auth, timeout=timeout) as client:
        return head_manifest(client, repo, tag)
