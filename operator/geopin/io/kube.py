"""The Kubernetes API edge: guarded JSON patches to workloads, reads, and policy status.

Uses the official ``kubernetes`` client (synchronous) on a bounded thread pool, so that the number of
API calls in flight is the pool size whatever the number of workloads. Events go through a small pool
of their own: a failover of thousands of workloads posts an Event for each, and those must not take
the slots of the patches that move the workloads. Every write carries the ``geopin`` field manager,
which GitOps tools can be told to ignore.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from geopin.core import crd
from geopin.core.timestamps import rfc3339
from geopin.core.workloads import Kind
from geopin.io.fencing import NotLeading, fence_writes, refusal

__all__ = [
    "CALL_FAILURES",
    "FIELD_MANAGER",
    "ApiError",
    "Kube",
    "KubeAPI",
    "NotLeading",
    "PatchOutcome",
    "load_api_client",
]

# What an API call raises when the API server answers with an error or cannot be reached (restarting,
# etcd paused, a dropped connection): expected in a cluster's life, logged as one line and retried.
CALL_FAILURES: tuple[type[BaseException], ...] = (ApiException, OSError, urllib3.exceptions.HTTPError)

FIELD_MANAGER = "geopin"

logger = logging.getLogger(__name__)


def load_api_client(kubeconfig: str | None = None, pool_size: int = 8) -> Any:
    """An ApiClient for in-cluster service-account credentials, else the kubeconfig."""
    configuration = load_configuration(kubeconfig)
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)


def load_configuration(kubeconfig: str | None = None) -> Any:
    """The client configuration: in-cluster service account, else ``kubeconfig`` or $KUBECONFIG."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """``applied``; or ``conflict`` (the object changed under us: re-read and recompute); or ``gone``."""

    result: str
    message: str = ""


def _path(kind: Kind, namespace: str | None, name: str) -> str:
    prefix = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{kind.plural}/{name}"


class KubeAPI(Protocol):
    """The API calls geopin's components make; :class:`Kube` is the real one, tests use an in-memory fake.

    Failures raise :class:`ApiError` (a 404 where a method says so is an answer, not an error), and a
    write refused because this replica no longer surely leads raises :class:`NotLeading`.
    """

    async def request(self, path: str, method: str, body: Any = None) -> Any: ...

    def list_all(self, path: str, page: int = 500) -> AsyncIterator[dict[str, Any]]: ...

    async def create_or_replace(self, path: str, body: dict[str, Any], *, unchanged: str | None = None) -> str: ...

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Mapping[str, Any] | None: ...

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...

    async def patch(self, kind: Kind, namespace: str | None, name: str, ops: list[dict[str, Any]]) -> PatchOutcome: ...

    async def post_event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str, *, once: bool = False
    ) -> None: ...

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None: ...


async def create_or_replace(api: KubeAPI, path: str, body: dict[str, Any], *, unchanged: str | None = None) -> str:
    """Create the object at ``path``, or replace it (optimistically, with its resourceVersion).

    ``unchanged``: a top-level field (e.g. ``data``); when the stored object already has the same
    value there, nothing is written. Returns "created", "replaced" or "unchanged".
    """
    try:
        current = await api.request(path, "GET")
    except ApiException as e:
        if e.status != 404:
            raise
        await api.request(path.rsplit("/", 1)[0], "POST", body)
        return "created"
    if unchanged is not None and current.get(unchanged) == body.get(unchanged):
        return "unchanged"
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    await api.request(path, "PUT", body)
    return "replaced"


class Kube:
    """Thin async wrapper; one instance per operator process (plus one that only the election uses).

    ``may_write``, when given, is asked on the API thread before every write, and again right before
    the write's first byte goes out (io/fencing.py): with leader election it says whether the Lease is
    surely still held, so a replica that stalled (a paused process, a slow API server) cannot write
    after another replica took over.
    """

    def __init__(
        self,
        api_client: Any,
        concurrency: int = 8,
        event_concurrency: int = 2,
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.api_client = api_client
        self.may_write = may_write
        if may_write is not None:
            fence_writes(api_client.rest_client.pool_manager, may_write)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="geopin-api")
        self._event_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=event_concurrency, thread_name_prefix="geopin-events"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._event_pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    async def _call(
        self,
        path: str,
        method: str,
        body: Any = None,
        content_type: str | None = None,
        *,
        parse: bool = True,
        pool: concurrent.futures.Executor | None = None,
    ) -> Any:
        """One API call on the thread pool. ``parse=False`` skips decoding a 2xx answer (returns None)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        query = [("fieldManager", FIELD_MANAGER)] if method in ("PATCH", "PUT", "POST") else []

        def call() -> Any:
            request = self.api_client.param_serialize(
                method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            # Early, to spend nothing on a write that cannot go; the fence asks again at the socket.
            if method != "GET" and self.may_write is not None and not self.may_write():
                raise refusal(method, path)
            response = self.api_client.call_api(*request, _request_timeout=30)
            response.read()
            if not parse and 200 <= response.status < 300:
                return None
            # Raises ApiException for any non-2xx status.
            return self.api_client.response_deserialize(response, {"2XX": "object"}).data

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool or self._pool, call)
        except ApiException as e:
            raise ApiError(e.status, _reason(e)) from None

    async def request(self, path: str, method: str, body: Any = None) -> Any:
        """A JSON request to any API path (raises ApiException on a non-2xx answer)."""
        return await self._call(path, method, body, "application/json" if body is not None else None)

    async def list_all(self, path: str, page: int = 500) -> AsyncIterator[dict[str, Any]]:
        """Every object of a LIST, page by page (``limit``/``continue``), without holding them all."""
        token = ""
        while True:
            query = f"?limit={page}" + (f"&continue={quote(token)}" if token else "")
            body = await self.request(path + query, "GET")
            for item in body.get("items", []):
                yield item
            token = (body.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def create_or_replace(self, path: str, body: dict[str, Any], *, unchanged: str | None = None) -> str:
        return await create_or_replace(self, path, body, unchanged=unchanged)

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        try:
            result: Mapping[str, Any] = await self._call(_path(kind, namespace, name), "GET")
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's ``data`` (base64 values, as stored); None when it does not exist."""
        try:
            secret = await self._call(f"/api/v1/namespaces/{namespace}/secrets/{name}", "GET")
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(secret.get("data") or {})

    async def patch(self, kind: Kind, namespace: str | None, name: str, ops: list[dict[str, Any]]) -> PatchOutcome:
        """Apply a guarded JSON patch. A failed ``test`` (422) or a conflict (409) is a ``conflict``."""
        try:
            # The answer (the whole object) is not needed: the watch brings the new version anyway.
            await self._call(_path(kind, namespace, name), "PATCH", ops, "application/json-patch+json", parse=False)
        except ApiException as e:
            if e.status == 404:
                return PatchOutcome("gone")
            if e.status in (409, 422):
                return PatchOutcome("conflict", message=str(e))
            raise
        return PatchOutcome("applied")

    async def post_event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str, *, once: bool = False
    ) -> None:
        """Record a core/v1 Event on an object (cluster-scoped objects' Events go to ``default``).

        ``once``: skip it when the object already has an Event with this reason and message (a restart
        then repeats no warning while the old one lives). Best effort: a failure is logged, not retried.
        """
        metadata = involved.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        if once and await self._has_event(namespace, str(metadata.get("uid")), reason, message[:1024]):
            return
        now = rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'geopin')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("HOSTNAME", FIELD_MANAGER),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call(
                f"/api/v1/namespaces/{namespace}/events",
                "POST",
                event,
                "application/json",
                parse=False,
                pool=self._event_pool,
            )
        except Exception as e:
            logger.warning("could not post Event %s on %s/%s: %s", reason, namespace, metadata.get("name"), e)

    async def _has_event(self, namespace: str, uid: str, reason: str, message: str) -> bool:
        selector = quote(f"involvedObject.uid={uid},reason={reason}")
        try:
            events = await self._call(
                f"/api/v1/namespaces/{namespace}/events?fieldSelector={selector}", "GET", pool=self._event_pool
            )
        except ApiException:
            return False
        return any(e.get("message") == message for e in events.get("items", []))

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        path = f"/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}/{name}/status"
        try:
            await self._call(path, "PATCH", {"status": dict(status)}, "application/merge-patch+json")
        except ApiException as e:
            if e.status != 404:  # the policy is gone: nothing to report on
                raise


def _reason(error: ApiException) -> str:
    """The API server's own one-line message (a Status body), else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(error, "reason", "") or error.status)


class ApiError(ApiException):
    """A failed API call that prints as the server's one-line message (no headers, no body dump)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status=status, reason=message)
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"
