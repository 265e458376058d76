"""An emulator of ACR geo-replication: copy what is pushed to a source replica to the others, late.

ACR replicates asynchronously; a tag pushed in one region shows up elsewhere seconds to minutes
later. This copier polls the source's /v2/_catalog and tags, and copies each new or moved tag (its
blobs, then its manifest) to every target once that target's lag has passed since the tag was first
seen. A target that is paused or down is retried on the next tick, as the real service would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from tests.harness import oci, procs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from tests.harness.registries import Registry


@dataclass(frozen=True)
class Copied:
    """One finished copy; times are time.monotonic()."""

    target: str
    repo: str
    tag: str
    digest: str
    seen_at: float
    copied_at: float


@dataclass
class _Pending:
    digest: str
    seen_at: float
    due_at: float


def copy_image(source: httpx.Client, target: httpx.Client, repo: str, tag: str, digest: str) -> None:
    """Copy `repo@digest` (and, for an index, its children) from source to target, tagging it `tag`."""
    body, media_type = _copy_manifest(source, target, repo, digest)
    oci.put_manifest(target, repo, tag, body, media_type)


def _copy_manifest(source: httpx.Client, target: httpx.Client, repo: str, digest: str) -> tuple[bytes, str]:
    fetched = oci.get_manifest(source, repo, digest)
    if fetched is None:
        raise LookupError(f"{repo}@{digest} vanished from the source")
    body, media_type = fetched
    blobs, children = oci.referenced_digests(body)
    for child in children:
        _copy_manifest(source, target, repo, child)
    for blob in blobs:
        if not oci.blob_exists(target, repo, blob):
            oci.push_blob(target, repo, oci.get_blob(source, repo, blob))
    oci.put_manifest(target, repo, digest, body, media_type)
    return body, media_type


class ReplicationEmulator(procs.Service):
    """Copies from `source` to `targets`, each after its own lag (seconds; a float for all, or per name).

    start()/stop() run the background copier (also a context manager); replicate_now() copies
    everything at once, synchronously, ignoring lags. `copies` records what was copied and when.
    """

    def __init__(
        self,
        source: Registry,
        targets: Iterable[Registry],
        lags: float | Mapping[str, float] = 0.0,
        *,
        poll_interval: float = 0.1,
        request_timeout: float = 2.0,
    ) -> None:
        self.source = source
        self.targets = {t.name: t for t in targets if t.name != source.name}
        self.lags: dict[str, float] = {
            name: (lags if isinstance(lags, int | float) else lags.get(name, 0.0)) for name in self.targets
        }
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.copies: list[Copied] = []
        self.last_error: BaseException | None = None
        self._seen: dict[tuple[str, str], str] = {}
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def close(self) -> None:
        """`stop()`, for `with`."""
        self.stop()

    def set_lag(self, target: str, seconds: float) -> None:
        """Change a target's lag: tags seen from now on wait `seconds`, and those already waiting wait no
        longer than that from now, as a backlog drains when ACR's replication catches up after a spike."""
        with self._lock:
            self.lags[target] = seconds
            latest = time.monotonic() + seconds
            for (name, _, _), pending in self._pending.items():
                if name == target:
                    pending.due_at = min(pending.due_at, latest)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("replication emulator already running")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="geopin-replication", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def replicate_now(self) -> None:
        """Copy every tag of the source to every target now, regardless of lags (raises on failure)."""
        with self._lock, self._client(self.source) as source:
            self._scan(source, time.monotonic())
            for name, target in self.targets.items():
                with self._client(target) as client:
                    for (repo, tag), digest in self._seen.items():
                        pending = self._pending.pop((name, repo, tag), None)
                        seen_at = pending.seen_at if pending else time.monotonic()
                        copy_image(source, client, repo, tag, digest)
                        self.copies.append(Copied(name, repo, tag, digest, seen_at, time.monotonic()))

    def pending(self) -> list[tuple[str, str, str]]:
        """(target, repo, tag) still waiting for their lag or for a reachable target."""
        with self._lock:
            return sorted(self._pending)

    # -- internals -----------------------------------------------------------------------------

    def _client(self, registry: Registry) -> httpx.Client:
        return registry.client(timeout=self.request_timeout)

    def _run(self) -> None:
        # One client per registry for the copier's life: its connections are kept across ticks (a
        # registry restarted meanwhile is simply reconnected to), so a tick costs no TLS handshake.
        clients = {r.name: self._client(r) for r in (self.source, *self.targets.values())}
        try:
            # The poll interval paces the copier itself; nothing waits on it for synchronisation.
            while not self._stopping.wait(self.poll_interval):
                try:
                    with self._lock:
                        self._tick(clients)
                except Exception as error:  # keep copying whatever goes wrong on one tick
                    self.last_error = error
        finally:
            for client in clients.values():
                client.close()

    def _tick(self, clients: Mapping[str, httpx.Client]) -> None:
        now = time.monotonic()
        source = clients[self.source.name]
        try:
            self._scan(source, now)
        except (httpx.TransportError, oci.RegistryAPIError) as error:
            self.last_error = error  # source unreachable: copy what is already due anyway
        for key, pending in sorted(self._pending.items()):
            if pending.due_at > time.monotonic() or self._stopping.is_set():
                continue
            name, repo, tag = key
            try:
                copy_image(source, clients[name], repo, tag, pending.digest)
            except (httpx.TransportError, oci.RegistryAPIError, LookupError) as error:
                self.last_error = error
                continue
            del self._pending[key]
            self.copies.append(Copied(name, repo, tag, pending.digest, pending.seen_at, time.monotonic()))

    def _scan(self, source: httpx.Client, now: float) -> None:
        for repo in oci.catalog(source):
            for tag in oci.tags(source, repo):
                digest = oci.head_manifest(source, repo, tag)
                if digest is None or self._seen.get((repo, tag)) == digest:
                    continue
                self._seen[(repo, tag)] = digest
                for name in self.targets:
                    self._pending[(name, repo, tag)] = _Pending(digest, now, now + self.lags.get(name, 0.0))
