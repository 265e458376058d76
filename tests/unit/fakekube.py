"""FakeKube: an in-memory Kubernetes API for unit tests of the async layer (what MockTransport is to httpx).

It implements ``geopin.io.kube.KubeAPI``. Objects live under their API paths; a JSON patch is applied
with RFC 6902 semantics (``jsonpatch``) and a failed ``test`` is a conflict, as the API server answers
422. A test scripts what the real server would do at a given call: ``fail`` (an HTTP error or any
exception, such as a timeout) and ``before`` (a hook, e.g. a user's edit landing just before a patch).
Writes are refused with ``NotLeading`` when ``may_write`` says so, as ``Kube`` does. ``watch`` hands
every stored object to a callback, as Kopf's watches feed geopin's cache.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from geopin.core.workloads import KINDS, Kind
from geopin.io.kube import ApiError, NotLeading, PatchOutcome, create_or_replace

__all__ = ["FakeKube", "workload_path"]

COLLECTIONS = {k.plural for k in KINDS.values()} | {"secrets", "configmaps", "leases", "nodes", "namespaces", "events"}


def workload_path(kind: Kind, namespace: str | None, name: str) -> str:
    prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{kind.plural}/{name}"


@dataclass
class _Script:
    method: str
    path: str
    error: BaseException | None = None
    hook: Callable[[], None] | None = None
    times: int = 1


@dataclass
class FakeKube:
    may_write: Callable[[], bool] | None = None
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call, in order
    events: list[dict[str, Any]] = field(default_factory=list)  # (involved name, type, reason, message)
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (policy, status) written
    _scripts: list[_Script] = field(default_factory=list)
    _watchers: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    _version: int = 0

    # -- setting the scene -------------------------------------------------------------------------

    def add(self, body: Mapping[str, Any]) -> str:
        """Store an object (a workload by its ``kind``, a Secret, ...); its path."""
        stored: dict[str, Any] = copy.deepcopy(dict(body))
        meta = stored.setdefault("metadata", {})
        kind = KINDS.get(body.get("kind", ""))
        if kind is not None:
            path = workload_path(kind, meta.get("namespace"), meta["name"])
        elif "namespace" not in meta:  # cluster-scoped: Node, Namespace
            path = f"/api/v1/{body['kind'].lower()}s/{meta['name']}"
        else:
            path = f"/api/v1/namespaces/{meta['namespace']}/{body['kind'].lower()}s/{meta['name']}"
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("generation", 1)
        self._store(path, stored)
        return path

    def fail(self, method: str, path: str, error: BaseException | int, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` on ``path`` fail (an int: that HTTP status)."""
        failure = ApiError(error, f"scripted HTTP {error}") if isinstance(error, int) else error
        self._scripts.append(_Script(method, path, error=failure, times=times))

    def before(self, method: str, path: str, hook: Callable[[], None], *, times: int = 1) -> None:
        """Run ``hook`` when the next call of ``method`` on ``path`` arrives, before it is served."""
        self._scripts.append(_Script(method, path, hook=hook, times=times))

    def edit(self, path: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else's write: change the stored object and bump its resourceVersion."""
        body = self.objects[path]
        change(body)
        self._store(path, body)

    def watch(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback`` with a copy of every object stored from now on (a watch's ADDED/MODIFIED)."""
        self._watchers.append(callback)

    def count(self, method: str, path: str | None = None) -> int:
        return sum(m == method and (path is None or p == path) for m, p in self.calls)

    # -- KubeAPI -----------------------------------------------------------------------------------

    async def request(self, path: str, method: str, body: Any = None) -> Any:
        path = path.split("?", 1)[0]
        self._enter(method, path)
        if method == "GET":
            if path in self.objects:
                return copy.deepcopy(self.objects[path])
            if path.rsplit("/", 1)[-1] in COLLECTIONS:
                items = [copy.deepcopy(v) for k, v in sorted(self.objects.items()) if k.rsplit("/", 1)[0] == path]
                return {"items": items, "metadata": {}}
            raise ApiError(404, f"{path} not found")
        if method == "POST":
            target = f"{path}/{body['metadata']['name']}"
            if target in self.objects:
                raise ApiError(409, f"{target} already exists")
            self._store(target, copy.deepcopy(body))
            return copy.deepcopy(self.objects[target])
        if path not in self.objects:
            raise ApiError(404, f"{path} not found")
        if method == "DELETE":
            del self.objects[path]
            return {}
        if method == "PUT":
            stored = self.objects[path]["metadata"].get("resourceVersion")
            if body["metadata"].get("resourceVersion") != stored:
                raise ApiError(409, f"{path}: the object has been modified")
            self._store(path, copy.deepcopy(body))
            return copy.deepcopy(self.objects[path])
        raise ApiError(405, f"{method} {path}")

    async def list_all(self, path: str, page: int = 500) -> AsyncIterator[dict[str, Any]]:
        for item in (await self.request(path, "GET"))["items"]:
            yield item

    async def create_or_replace(self, path: str, body: dict[str, Any], *, unchanged: str | None = None) -> str:
        return await create_or_replace(self, path, body, unchanged=unchanged)

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        path = workload_path(kind, namespace, name)
        self._enter("GET", path)
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        self._enter("GET", path)
        secret = self.objects.get(path)
        return dict(secret.get("data") or {}) if secret is not None else None

    async def patch(self, kind: Kind, namespace: str | None, name: str, ops: list[dict[str, Any]]) -> PatchOutcome:
        path = workload_path(kind, namespace, name)
        self._enter("PATCH", path)
        if path not in self.objects:
            return PatchOutcome("gone")
        try:
            patched = jsonpatch.apply_patch(self.objects[path], ops)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPointerException) as e:
            return PatchOutcome("conflict", message=str(e))
        if patched.get("spec") != self.objects[path].get("spec"):
            patched["metadata"]["generation"] = patched["metadata"].get("generation", 1) + 1
        self._store(path, patched)
        return PatchOutcome("applied")

    async def post_event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str, *, once: bool = False
    ) -> None:
        self._enter("POST", "/api/v1/events")
        self.events.append({"name": involved["metadata"]["name"], "type": type, "reason": reason, "message": message})

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._enter("PATCH", f"/apis/geopin.io/v1alpha1/registrypolicies/{name}/status")
        self.statuses.append((name, copy.deepcopy(dict(status))))

    # -- inside ----------------------------------------------------------------------------------------

    def _enter(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        if method != "GET" and self.may_write is not None and not self.may_write():
            raise NotLeading(f"{method} {path}")
        for script in list(self._scripts):
            if script.method == method and script.path == path:
                script.times -= 1
                if script.times <= 0:
                    self._scripts.remove(script)
                if script.hook is not None:
                    script.hook()
                if script.error is not None:
                    raise script.error

    def _store(self, path: str, body: dict[str, Any]) -> None:
        self._version += 1
        body.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.objects[path] = body
        for callback in self._watchers:
            callback(copy.deepcopy(body))
