"""The ConfigMap store: a facade over the apiserver calls, the codec and the capacity guard."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes.client
from opentelemetry import metrics

from ...archive import Archive
from ...boundary import is_dns_label
from ...contract import OwnerReference
from ...errors import ConfigurationError, StorageConflict, StorageForbidden, StorageUnavailable
from ...retry import RetryPolicy
from ...settings import Settings
from ...telemetry import NOOP, Telemetry
from ..base import (
    PROVENANCE_FILE,
    ContextRecord,
    Deletion,
    Listed,
    StillExpired,
    Store,
    Stored,
)
from ..calls import StorageCalls
from ..failures import Conflict, NotFound
from . import errors
from .api import ConfigMapApi, load_configuration
from .capacity import CapacityGuard, Caps, Usage
from .codec import (
    FUNCTION_LABEL,
    KEY,
    SELECTOR,
    annotation_changes,
    configmap_body,
    configmap_name,
    context_uri,
    record_from_metadata,
)

log = logging.getLogger("build_context.stores.configmap")

_RACES = 5
"""How often a put re-reads after losing a race (a concurrent refresh or a cleanup delete)."""


@dataclass(frozen=True)
class ConfigMapHandle:
    """What `delete` needs: the name; it re-reads the object and deletes that version."""

    name: str


class _Gone(Exception):
    """The ConfigMap disappeared between two of our calls (a cleanup run deleted it)."""


class ConfigMapStore(Store[ConfigMapHandle]):
    setting_names = (
        "configmap_max_bytes",
        "configmap_namespace_max_bytes",
        "configmap_namespace_max_count",
        "configmap_usage_refresh_seconds",
    )
    docs_page = "docs/configmap.md"
    backend = "configmap"

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        home_namespace: str,
        caps: Caps,
        *,
        namespaces: frozenset[str] = frozenset(),
        retry: RetryPolicy | None = None,
        threads: int = 8,
        page_size: int = 500,
        telemetry: Telemetry = NOOP,
        meter_provider: metrics.MeterProvider | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home_namespace = home_namespace
        self.namespaces = frozenset({home_namespace, *namespaces})
        """What `list` reads by default; which namespaces a request may use is the service's
        to check (BUILD_CONTEXT_ALLOWED_NAMESPACES), once."""
        calls = StorageCalls(
            self.backend, errors.BOUNDARY, telemetry, retry or RetryPolicy(), sleep
        )
        self.api = ConfigMapApi(configuration, calls, threads, page_size)
        self.capacity = CapacityGuard(
            caps, lambda ns, probe: self.api.pages(ns, probe), meter_provider, monotonic
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        telemetry: Telemetry = NOOP,
        *,
        configuration: kubernetes.client.Configuration | None = None,
        **parts: Any,
    ) -> ConfigMapStore:
        """`parts` are the constructor's keyword arguments not taken from settings (tests)."""
        return cls(
            configuration or load_configuration(),
            settings.home_namespace,
            Caps(
                settings.configmap_max_bytes,
                settings.configmap_namespace_max_bytes,
                settings.configmap_namespace_max_count,
                settings.configmap_usage_refresh_seconds,
            ),
            namespaces=settings.namespaces,
            retry=RetryPolicy.from_settings(settings),
            threads=settings.server_threads,
            page_size=settings.cleanup_page_size,
            telemetry=telemetry,
            **parts,
        )

    def check(self) -> None:
        """Refuse to start without the right to list ConfigMaps at home; a down apiserver is
        only logged, since requests fail retryably until it is back."""
        home = self.home_namespace
        if not is_dns_label(home):
            raise ConfigurationError("BUILD_CONTEXT_NAMESPACE", f"{home!r} is not a namespace name")
        try:
            self.capacity.refresh(home, probe=True)
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
        namespace = record.namespace
        self.capacity.check_size(archive.size_bytes, len(archive.provenance or b""))
        name = configmap_name(record.function, record.content_hash)
        body = configmap_body(archive, record, owner)
        for _ in range(_RACES):
            if not self.capacity.reserve(namespace, archive.size_bytes):
                existing = self.api.read_metadata(namespace, name)
                if existing is None:
                    raise self.capacity.exceeded(namespace, archive.size_bytes)
            else:
                try:
                    created = self.api.create(namespace, body)
                    return self._stored(record_from_metadata(created), False)
                except Conflict:
                    self.capacity.release(namespace, archive.size_bytes)
                except BaseException:
                    self.capacity.release(namespace, archive.size_bytes)
                    raise
                existing = self.api.read_metadata(namespace, name)
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
        return self._read_binary(namespace, function, content_hash, KEY)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        return self._read_binary(namespace, function, content_hash, PROVENANCE_FILE)

    def _read_binary(self, namespace: str, function: str, content_hash: str, key: str) -> bytes:
        """One `binaryData` entry of a context's ConfigMap, decoded; KeyError when the
        ConfigMap or the entry is missing."""
        try:
            found = self.api.read(namespace, configmap_name(function, content_hash))
        except NotFound:
            raise KeyError((namespace, function, content_hash)) from None
        data = (found.get("binaryData") or {}).get(key)
        if data is None:
            raise KeyError((namespace, function, content_hash))
        return base64.b64decode(data)

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        """One listing with the function's label: the apiserver filters."""
        selector = f"{SELECTOR},{FUNCTION_LABEL}={function}"
        for item in self.api.pages(namespace, selector=selector):
            try:
                yield record_from_metadata(item["metadata"])
            except (KeyError, ValueError):
                continue  # not a record of ours; `list` logs it

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[ConfigMapHandle]]:
        for namespace in sorted(self.namespaces if namespaces is None else namespaces):
            for item in self.api.pages(namespace):
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
                yield Listed(record, ConfigMapHandle(metadata["name"]))

    def delete(self, item: Listed[ConfigMapHandle], still_expired: StillExpired) -> Deletion:
        """Re-read; delete only that very version (uid + resourceVersion preconditions), so a
        refresh between our read and our delete makes the delete fail instead."""
        name, namespace = item.handle.name, item.record.namespace
        current = self.api.read_metadata(namespace, name)
        if current is None:
            return Deletion.GONE
        try:
            record = record_from_metadata(current)
        except (KeyError, ValueError):
            return Deletion.KEPT
        if not still_expired(record):
            return Deletion.KEPT
        preconditions = {"uid": current["uid"], "resourceVersion": current["resourceVersion"]}
        try:
            self.api.delete(namespace, name, preconditions)
        except NotFound:
            return Deletion.GONE
        except Conflict:
            return Deletion.KEPT
        self.capacity.release(namespace, record.size_bytes)
        return Deletion.DELETED

    def usage(self, namespace: str) -> Usage:
        return self.capacity.usage(namespace)

    def close(self) -> None:
        self.capacity.close()
        self.api.close()

    # --- the steps of a put ------------------------------------------------------------------

    def _reuse(
        self,
        namespace: str,
        existing: dict[str, Any],
        record: ContextRecord,
        owner: OwnerReference | None,
    ) -> Stored:
        """Same content already stored: push its expiry forward (metadata stays mutable on an
        immutable ConfigMap), never touch the bytes; re-read and patch again on a conflict."""
        for _ in range(_RACES):
            current = self._ours(existing, record)
            patch = _reuse_patch(existing, current, record, owner)
            if patch is None:
                return self._stored(current, True)
            try:
                patched = self.api.patch_metadata(namespace, existing["name"], patch)
                return self._stored(record_from_metadata(patched), True)
            except (NotFound, Conflict):
                pass
            found = self.api.read_metadata(namespace, existing["name"])
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


def _reuse_patch(
    existing: Mapping[str, Any],
    current: ContextRecord,
    record: ContextRecord,
    owner: OwnerReference | None,
) -> dict[str, Any] | None:
    """The metadata patch of a reuse (None: nothing to change), conditional on the version read.

    Owners: a context keeps an owner reference only while one owner has it to itself. A reuse
    never adds an owner, and a reuse by anyone else (another owner or none) removes the owner
    reference, so that no request's owner, mistaken or hostile, can get a shared context
    garbage-collected; the TTL then governs it."""
    patch: dict[str, Any] = {"resourceVersion": existing["resourceVersion"]}
    refreshed = current.refreshed(record.expires_at)
    if changed := annotation_changes(current, refreshed):
        patch["annotations"] = changed
    references = list(existing.get("ownerReferences") or [])
    if references and (owner is None or any(r.get("uid") != owner.uid for r in references)):
        patch["ownerReferences"] = None
    return None if len(patch) == 1 else patch
