"""One immutable ConfigMap per (function, contentHash), in the function's namespace.

A builder pod mounts the ConfigMap and reads the archive as `tar://` (docs/configmap.md).
Every ConfigMap lives in etcd, whose quota is shared by the whole cluster: archives above
BUILD_CONTEXT_CONFIGMAP_MAX_BYTES never reach the apiserver, and a per-namespace cap (bytes and
count, from a metadata-only list refreshed now and then) keeps a flood of contexts from filling
etcd. Both send the context to the overflow store when one is configured.

All calls go through the official client's ApiClient, with raw JSON and, where only metadata
matters, `PartialObjectMetadata` replies, so neither listing nor refreshing moves archive bytes.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.rest import ApiException
from opentelemetry import metrics, trace

from ..archive import Archive, image_tag
from ..contract import OwnerReference, utc_text
from ..errors import (
    BuildContextError,
    CapacityExceeded,
    ConfigurationError,
    ContextTooLarge,
    InternalError,
    StorageConflict,
    StorageForbidden,
    StorageUnavailable,
)
from ..retry import RetryPolicy
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import (
    MANAGED_BY,
    PROVENANCE_FILE,
    RETAIN,
    ContextRecord,
    Listed,
    Store,
    Stored,
    parse_time,
)

log = logging.getLogger("build_context.stores.configmap")

KEY = "context.tar.gz"
"""The one `binaryData` key: mounted at MOUNT_PATH it is the file kaniko reads."""
MOUNT_PATH = "/workspace"
APISERVER_LIMIT = 1024 * 1024
"""The apiserver rejects a ConfigMap whose data values add up to more (422, FieldValueTooLong)."""
OBJECT_DATA_LIMIT = 1_040_000
"""Archive plus provenance envelope: the largest BUILD_CONTEXT_CONFIGMAP_MAX_BYTES allowed."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
FUNCTION_LABEL = "build-context.dev/function"
RUNTIME_LABEL = "build-context.dev/runtime"
IMAGE_TAG_LABEL = "build-context.dev/image-tag"
"""`sha256-<first 24 hex of contentHash>`: the image tag of the reply, short enough for a label."""

_A = "build-context.dev/"
CONTENT_HASH = _A + "content-hash"
ARCHIVE_SHA256 = _A + "archive-sha256"
SIZE_BYTES = _A + "size-bytes"
RUNTIME_VERSION = _A + "runtime-version"
CREATED_AT = _A + "created-at"
EXPIRES_AT = _A + "expires-at"
REQUEST_ID = _A + "request-id"
METADATA = _A + "metadata"

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
REQUIRED_VERBS = {
    "create": ("create", "get", "list", "patch"),
    "cleanup": ("delete", "get", "list"),
}
"""What each handler calls on `configmaps` in its namespaces; the Roles grant exactly this."""

_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MIN_ATTEMPT_SECONDS = 5.0
_CONNECT_SECONDS = 5.0
_PROBE_SECONDS = 5.0
PAGE_LIMIT = 50
"""Most items per list page: each is ~1.8 KB of metadata (half of it managedFields), and a page
is held in memory whole."""
_RACES = 5
"""How often a put re-reads after losing a race (a concurrent refresh or a cleanup delete)."""


def configmap_name(function: str, content_hash: str) -> str:
    """`<function>-build-context-<contentHash>`: at most 63 + 15 + 64 = 142 of the 253 allowed."""
    name = f"{function}-build-context-{content_hash}"
    if len(name) > 253 or not _NAME.match(name):
        raise InternalError(f"cannot name a ConfigMap after function {function!r}")
    return name


def context_uri() -> str:
    return f"tar://{MOUNT_PATH}/{KEY}"


def configmap_body(
    archive: Archive, record: ContextRecord, owner: OwnerReference | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": configmap_name(record.function, record.content_hash),
        "namespace": record.namespace,
        "labels": {
            MANAGED_BY_LABEL: MANAGED_BY,
            FUNCTION_LABEL: record.function,
            RUNTIME_LABEL: record.runtime,
            IMAGE_TAG_LABEL: image_tag(record.content_hash),
        },
        "annotations": {
            CONTENT_HASH: record.content_hash,
            ARCHIVE_SHA256: record.archive_sha256,
            SIZE_BYTES: str(record.size_bytes),
            RUNTIME_VERSION: record.runtime_version,
            CREATED_AT: utc_text(record.created_at),
            EXPIRES_AT: utc_text(record.expires_at),
            REQUEST_ID: record.request_id,
            METADATA: json.dumps(dict(record.metadata), sort_keys=True, separators=(",", ":")),
        },
    }
    if owner is not None:
        metadata["ownerReferences"] = [_owner_reference(owner)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "immutable": True,
        "binaryData": {
            KEY: base64.b64encode(archive.data).decode("ascii"),
            # The provenance envelope, mounted beside the archive (docs/deploy.md).
            **(
                {PROVENANCE_FILE: base64.b64encode(archive.provenance).decode("ascii")}
                if archive.provenance is not None
                else {}
            ),
        },
    }


def record_from_metadata(metadata: Mapping[str, Any]) -> ContextRecord:
    """The record kept in labels and annotations (KeyError/ValueError when not ours)."""
    labels = metadata.get("labels") or {}
    notes = metadata.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise ValueError(f"{MANAGED_BY_LABEL} is not {MANAGED_BY!r}")
    extra = json.loads(notes.get(METADATA) or "{}")
    if not isinstance(extra, dict):
        raise ValueError(f"{METADATA} is not a JSON object")
    return ContextRecord(
        namespace=str(metadata["namespace"]),
        function=str(labels[FUNCTION_LABEL]),
        runtime=str(labels[RUNTIME_LABEL]),
        runtime_version=str(notes[RUNTIME_VERSION]),
        content_hash=str(notes[CONTENT_HASH]),
        archive_sha256=str(notes[ARCHIVE_SHA256]),
        size_bytes=int(notes[SIZE_BYTES]),
        created_at=parse_time(str(notes[CREATED_AT])),
        expires_at=parse_time(str(notes[EXPIRES_AT])),
        request_id=str(notes.get(REQUEST_ID, "")),
        metadata={str(k): str(v) for k, v in extra.items()},
        retain=str(labels.get(RETAIN, "")).lower() == "true",
    )


def _owner_reference(owner: OwnerReference) -> dict[str, str]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
    }


def load_configuration() -> kubernetes.client.Configuration:
    """KUBECONFIG when set, else the pod's ServiceAccount when in a pod, else ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig or None, client_configuration=configuration
            )
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise ConfigurationError(
            "KUBECONFIG",
            f"no usable Kubernetes credentials ({exc})",
            "Run in a pod with a ServiceAccount token, or point KUBECONFIG at a kubeconfig file.",
        ) from None
    return configuration


@dataclass(frozen=True)
class ConfigMapHandle:
    """What `delete` needs: the object as it was listed."""

    name: str
    uid: str
    resource_version: str


@dataclass
class Usage:
    """Our ConfigMaps in one namespace: as last listed, plus what this process added since."""

    bytes: int = 0
    count: int = 0
    listed_at: float | None = None


class _Gone(Exception):
    """The ConfigMap disappeared between two of our calls (a cleanup run deleted it)."""


class ConfigMapStore(Store):
    backend = "configmap"

    def __init__(
        self,
        settings: Settings,
        configuration: kubernetes.client.Configuration,
        telemetry: Telemetry = NOOP,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.retry = RetryPolicy.from_settings(settings)
        self.namespaces = frozenset({settings.home_namespace, *settings.extra_namespaces})
        self._sleep = sleep
        self._monotonic = monotonic
        configuration = copy.copy(configuration)
        configuration.retries = False  # our RetryPolicy retries, with backoff and a deadline
        configuration.connection_pool_maxsize = settings.threads
        self.client = kubernetes.client.ApiClient(configuration)
        self._usage: dict[str, Usage] = {}
        self._usage_lock = threading.RLock()
        self._closed = False
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("build-context")
        meter.create_observable_gauge(
            "build_context.configmap.usage",
            callbacks=[self._observe_bytes],
            unit="By",
            description="Archive bytes in our ConfigMaps, per namespace (capacity guard).",
        )
        meter.create_observable_gauge(
            "build_context.configmap.objects",
            callbacks=[self._observe_count],
            unit="{configmap}",
            description="Our ConfigMaps, per namespace (capacity guard).",
        )

    @classmethod
    def from_settings(cls, settings: Settings, telemetry: Telemetry = NOOP) -> ConfigMapStore:
        return cls(settings, load_configuration(), telemetry)

    # --- Store ---------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse to start without the right to list ConfigMaps at home; a down apiserver is
        only logged, since requests fail retryably until it is back."""
        home = self.settings.home_namespace
        if not _DNS_LABEL.match(home):
            raise ConfigurationError("BUILD_CONTEXT_NAMESPACE", f"{home!r} is not a namespace name")
        try:
            self._refresh_usage(home, retry=False)
        except StorageForbidden as error:
            raise ConfigurationError("BUILD_CONTEXT_NAMESPACE", error.message) from None
        except StorageUnavailable as error:
            log.warning(
                "configmap store: apiserver not reachable at start-up; requests fail "
                "retryably until it is",
                extra={"namespace": home, "error": error.message},
            )

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        namespace = self._allowed(record.namespace)
        self._check_size(archive)
        name = configmap_name(record.function, record.content_hash)
        body = configmap_body(archive, record, owner)
        for _ in range(_RACES):
            if not self._reserve(namespace, archive.size_bytes):
                existing = self._read_metadata(namespace, name)
                if existing is None:
                    raise self._capacity_exceeded(namespace, archive.size_bytes)
            else:
                try:
                    created = self._request(
                        "create", namespace, "POST", _path(namespace), body=body
                    )
                    return self._stored(record_from_metadata(created["metadata"]), False)
                except ApiException as error:
                    self._release(namespace, archive.size_bytes)
                    if error.status != 409:
                        raise self._failure(error, "create", namespace, name) from error
                except BaseException:
                    self._release(namespace, archive.size_bytes)
                    raise
                existing = self._read_metadata(namespace, name)
                if existing is None:
                    continue
            try:
                return self._reuse(namespace, existing, record, owner)
            except _Gone:
                continue
        raise StorageUnavailable(
            f"ConfigMap {namespace}/{name} kept being deleted while being stored; "
            "is a cleanup run deleting fresh contexts? Retry the request."
        )

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        name = configmap_name(function, content_hash)
        try:
            found = self._request("get", namespace, "GET", _path(namespace, name), full=True)
        except ApiException as error:
            if error.status == 404:
                raise KeyError((namespace, function, content_hash)) from None
            raise self._failure(error, "get", namespace, name) from error
        return base64.b64decode((found.get("binaryData") or {})[KEY])

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        name = configmap_name(function, content_hash)
        try:
            found = self._request("get", namespace, "GET", _path(namespace, name), full=True)
        except ApiException as error:
            if error.status == 404:
                raise KeyError((namespace, function, content_hash)) from None
            raise self._failure(error, "get", namespace, name) from error
        envelope = (found.get("binaryData") or {}).get(PROVENANCE_FILE)
        if envelope is None:
            raise KeyError((namespace, function, content_hash))
        return base64.b64decode(envelope)

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed]:
        for namespace in sorted(self.namespaces if namespaces is None else namespaces):
            for item in self._pages(namespace):
                metadata = item["metadata"]
                try:
                    record = record_from_metadata(metadata)
                except (KeyError, ValueError) as error:
                    log.warning(
                        "configmap store: skipping a ConfigMap with our label but no record",
                        extra={
                            "namespace": namespace,
                            "configMap": metadata.get("name"),
                            "error": str(error),
                        },
                    )
                    continue
                handle = ConfigMapHandle(
                    metadata["name"], metadata["uid"], metadata["resourceVersion"]
                )
                yield Listed(record, handle)

    def delete(self, item: Listed, still_expired: Callable[[ContextRecord], bool]) -> bool:
        """Re-read; delete only that very version (uid + resourceVersion preconditions), so a
        refresh between our read and our delete makes the delete fail instead."""
        handle: ConfigMapHandle = item.handle
        namespace = item.record.namespace
        current = self._read_metadata(namespace, handle.name)
        if current is None:
            return False
        try:
            record = record_from_metadata(current)
        except (KeyError, ValueError):
            return False
        if not still_expired(record):
            return False
        preconditions = {"uid": current["uid"], "resourceVersion": current["resourceVersion"]}
        try:
            self._request(
                "delete",
                namespace,
                "DELETE",
                _path(namespace, handle.name),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions},
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise self._failure(error, "delete", namespace, handle.name) from error
        self._release(namespace, record.size_bytes)
        return True

    def close(self) -> None:
        self._closed = True
        self.client.close()
        self.client.rest_client.pool_manager.clear()

    # --- usage and the capacity guard ------------------------------------------------------

    def usage(self, namespace: str) -> Usage:
        with self._usage_lock:
            found = self._usage.get(namespace, Usage())
            return Usage(found.bytes, found.count, found.listed_at)

    def _reserve(self, namespace: str, size: int) -> bool:
        """Count the context in before creating it; False when it would pass a cap."""
        with self._usage_lock:
            usage = self._usage.get(namespace)
            refresh = self.settings.configmap_usage_refresh_seconds
            if (
                usage is None
                or usage.listed_at is None
                or (self._monotonic() - usage.listed_at >= refresh)
            ):
                usage = self._refresh_usage(namespace, retry=True)
            if (
                usage.bytes + size > self.settings.configmap_namespace_max_bytes
                or usage.count + 1 > self.settings.configmap_namespace_max_count
            ):
                return False
            usage.bytes += size
            usage.count += 1
            return True

    def _release(self, namespace: str, size: int) -> None:
        with self._usage_lock:
            usage = self._usage.get(namespace)
            if usage is not None:
                usage.bytes = max(0, usage.bytes - size)
                usage.count = max(0, usage.count - 1)

    def _refresh_usage(self, namespace: str, retry: bool) -> Usage:
        """Sum the size annotations of a metadata-only list (no archive bytes move)."""
        total = count = 0
        for item in self._pages(namespace, retry=retry):
            notes = item["metadata"].get("annotations") or {}
            with contextlib.suppress(ValueError):
                total += int(notes.get(SIZE_BYTES) or 0)
            count += 1
        usage = Usage(total, count, self._monotonic())
        with self._usage_lock:
            self._usage[namespace] = usage
        return usage

    def _capacity_exceeded(self, namespace: str, size: int) -> CapacityExceeded:
        usage = self.usage(namespace)
        max_bytes = self.settings.configmap_namespace_max_bytes
        max_count = self.settings.configmap_namespace_max_count
        return CapacityExceeded(
            f"namespace {namespace!r} already holds {usage.count} build-context ConfigMaps "
            f"with {usage.bytes} bytes; {size} more bytes would pass the cap of {max_bytes} "
            f"bytes (BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_BYTES) or {max_count} ConfigMaps "
            "(BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_COUNT), which protects etcd: retry after "
            "cleanup has run, raise the cap within etcd's quota, or set "
            "BUILD_CONTEXT_OVERFLOW_STORAGE=s3"
        )

    def _observe_bytes(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return self._observe(lambda usage: usage.bytes)

    def _observe_count(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return self._observe(lambda usage: usage.count)

    def _observe(self, value: Callable[[Usage], int]) -> Iterable[metrics.Observation]:
        if self._closed:
            return []
        with self._usage_lock:
            return [
                metrics.Observation(value(usage), {"namespace": namespace})
                for namespace, usage in sorted(self._usage.items())
            ]

    # --- the steps of a put ------------------------------------------------------------------

    def _allowed(self, namespace: str) -> str:
        if namespace not in self.namespaces:
            raise StorageForbidden(
                f"namespace {namespace!r} is not one this function writes to "
                f"({', '.join(sorted(self.namespaces))}): add it to "
                "BUILD_CONTEXT_ALLOWED_NAMESPACES and grant the Role there"
            )
        return namespace

    def _check_size(self, archive: Archive) -> None:
        """The archive against the setting; archive and provenance envelope together against
        the largest value the setting may take, which keeps the object under the apiserver's
        limit (the envelope is not the caller's to shrink, but usually a few KB)."""
        limit = min(self.settings.configmap_max_bytes, APISERVER_LIMIT)
        together = archive.size_bytes + len(archive.provenance or b"")
        if archive.size_bytes > limit or together > OBJECT_DATA_LIMIT:
            raise ContextTooLarge(
                f"the archive is {archive.size_bytes} bytes ({together} with its provenance); a "
                f"ConfigMap holds at most {limit} (BUILD_CONTEXT_CONFIGMAP_MAX_BYTES, under the "
                f"apiserver's 1 MiB; {OBJECT_DATA_LIMIT} with the provenance): send fewer "
                "or smaller files or dependencies, raise the limit (at most 1040000), or set "
                "BUILD_CONTEXT_OVERFLOW_STORAGE=s3 to store large contexts in S3"
            )

    def _reuse(
        self,
        namespace: str,
        existing: dict[str, Any],
        record: ContextRecord,
        owner: OwnerReference | None,
    ) -> Stored:
        """Same content already stored: push its expiry forward (metadata stays mutable on an
        immutable ConfigMap), add the owner if missing, never touch the bytes."""
        for _ in range(_RACES):
            current = self._ours(existing, record)
            refreshed = current.refreshed(record.expires_at)
            patch: dict[str, Any] = {"resourceVersion": existing["resourceVersion"]}
            if refreshed.expires_at != current.expires_at:
                patch["annotations"] = {EXPIRES_AT: utc_text(refreshed.expires_at)}
            references = list(existing.get("ownerReferences") or [])
            if owner is not None and all(r.get("uid") != owner.uid for r in references):
                patch["ownerReferences"] = [*references, _owner_reference(owner)]
            if len(patch) == 1:
                return self._stored(current, True)
            try:
                patched = self._request(
                    "patch",
                    namespace,
                    "PATCH",
                    _path(namespace, existing["name"]),
                    body={"metadata": patch},
                    content_type="application/merge-patch+json",
                )
                return self._stored(record_from_metadata(patched["metadata"]), True)
            except ApiException as error:
                if error.status not in (404, 409):
                    raise self._failure(error, "patch", namespace, existing["name"]) from error
            found = self._read_metadata(namespace, existing["name"])
            if found is None:
                raise _Gone()
            existing = found
        raise StorageUnavailable(
            f"ConfigMap {namespace}/{existing['name']} kept changing while its expiry was "
            "being refreshed; retry the request"
        )

    def _ours(self, existing: Mapping[str, Any], record: ContextRecord) -> ContextRecord:
        name = existing.get("name")
        try:
            current = record_from_metadata(existing)
        except (KeyError, ValueError) as error:
            raise StorageConflict(
                f"ConfigMap {record.namespace}/{name} exists but is not a build context of "
                f"ours ({error}); it is left alone: delete or rename it"
            ) from None
        if (current.function, current.content_hash) != (record.function, record.content_hash):
            raise StorageConflict(
                f"ConfigMap {record.namespace}/{name} holds context {current.content_hash} of "
                f"function {current.function!r}, not {record.content_hash}; it is never "
                "overwritten: delete it if it is stale"
            )
        return current

    def _stored(self, record: ContextRecord, reused: bool) -> Stored:
        storage = {
            "backend": self.backend,
            "namespace": record.namespace,
            "configMap": configmap_name(record.function, record.content_hash),
            "key": KEY,
        }
        return Stored(record, storage, context_uri(), reused, {**storage, "key": PROVENANCE_FILE})

    # --- the apiserver ---------------------------------------------------------------------------

    def _read_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._request("get", namespace, "GET", _path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise self._failure(error, "get", namespace, name) from error
        metadata: dict[str, Any] = found["metadata"]
        return metadata

    def _pages(self, namespace: str, retry: bool = True) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            query: list[tuple[str, Any]] = [
                ("labelSelector", SELECTOR),
                ("limit", min(self.settings.cleanup_page_size, PAGE_LIMIT)),
            ]
            if token:
                query.append(("continue", token))
            try:
                page = self._request(
                    "list", namespace, "GET", _path(namespace), query=query, retry=retry, list_=True
                )
            except ApiException as error:
                raise self._failure(error, "list", namespace, "") from error
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def _request(
        self,
        verb: str,
        namespace: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str = "application/json",
        full: bool = False,
        list_: bool = False,
        retry: bool = True,
    ) -> dict[str, Any]:
        """One API call, retried on 429, 5xx and connection errors within the deadline.

        Raises ApiException for other statuses (callers give 404 and 409 their meaning), and
        StorageUnavailable once transient failures outlast the retry budget."""
        accept = "application/json" if full else _METADATA_LIST if list_ else _METADATA_ONLY
        headers = {"Accept": accept, "Content-Type": content_type}
        policy = self.retry if retry else RetryPolicy(attempts=1, deadline=_PROBE_SECONDS)
        started = time.monotonic()

        def attempt() -> dict[str, Any]:
            left = policy.deadline - (time.monotonic() - started)
            read = max(0.1, min(left, max(_MIN_ATTEMPT_SECONDS, policy.deadline / policy.attempts)))
            response = self.client.call_api(
                path,
                method,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=(min(_CONNECT_SECONDS, read), read),
            )
            try:
                data = response.data
            finally:
                response.release_conn()
            decoded: dict[str, Any] = json.loads(data, object_hook=_lean) if data else {}
            return decoded

        def on_retry(attempt: int, error: BaseException) -> None:
            self.telemetry.retried(self.backend, attempt, error)
            log.warning(
                "storage call retried",
                extra={
                    "store": self.backend,
                    "operation": verb,
                    "namespace": namespace,
                    "attempt": attempt,
                    "error": _describe(error),
                },
            )

        with self.telemetry.span(
            f"kube {verb} configmaps",
            {
                "build_context.store": self.backend,
                "k8s.namespace.name": namespace,
                "http.request.method": method,
            },
            trace.SpanKind.CLIENT,
        ) as span:
            try:
                return policy.call(attempt, _transient, on_retry, self._sleep)
            except ApiException as error:
                span.set_attribute("http.response.status_code", error.status)
                if _transient(error):
                    raise self._unavailable(error, verb, namespace, policy) from error
                raise
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise self._unavailable(error, verb, namespace, policy) from error

    def _unavailable(
        self, error: BaseException, verb: str, namespace: str, policy: RetryPolicy
    ) -> StorageUnavailable:
        host = self.client.configuration.host
        return StorageUnavailable(
            f"the Kubernetes API server at {host} did not {verb} configmaps in namespace "
            f"{namespace!r} within {policy.attempts} attempts / {policy.deadline:g} s "
            f"({_describe(error)[:300]}); retry later"
        )

    def _failure(
        self, error: ApiException, verb: str, namespace: str, name: str
    ) -> BuildContextError:
        what = f"ConfigMap {namespace}/{name}" if name else f"configmaps in {namespace!r}"
        message = _message(error)
        if error.status == 401:
            return StorageForbidden(
                f"the apiserver did not accept our credentials to {verb} {what} ({message}): "
                "check the pod's ServiceAccount token, or the user in KUBECONFIG"
            )
        if error.status == 403:
            return StorageForbidden(
                f"the apiserver refused to {verb} {what} (403: {message}): bind the "
                f"ServiceAccount to the Role in knative/base/rbac.yaml in namespace "
                f"{namespace!r} (verbs on configmaps, requests: "
                f"{', '.join(REQUIRED_VERBS['create'])}; cleanup: "
                f"{', '.join(REQUIRED_VERBS['cleanup'])})"
            )
        if error.status == 404 and verb in ("create", "list"):
            return StorageForbidden(
                f"cannot {verb} {what}: {message}; create the namespace or remove it from "
                "BUILD_CONTEXT_NAMESPACE / BUILD_CONTEXT_ALLOWED_NAMESPACES"
            )
        if error.status == 410:
            return StorageUnavailable(f"listing {what} took too long ({message}); run again")
        if error.status == 409:
            return StorageConflict(f"cannot {verb} {what}: {message}")
        return InternalError(f"the apiserver rejected {verb} of {what} ({error.status}): {message}")


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        status = int(error.status or 0)
        return status == 0 or status == 429 or status >= 500
    return isinstance(error, urllib3.exceptions.HTTPError | OSError)


def _lean(found: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields while decoding: nothing here reads them, and they are half a page."""
    found.pop("managedFields", None)
    return found


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {_message(error)}"
    return f"{type(error).__name__}: {error}"


def _message(error: ApiException) -> str:
    try:
        status = json.loads(error.body or "")
        return str(status.get("message") or error.reason)
    except (ValueError, AttributeError, TypeError):
        return str(error.reason or error.body or "")


def _path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    return f"{base}/{name}" if name else base
