"""The guard of etcd's shared quota: no archive above the per-ConfigMap limit, and a cap on our
ConfigMaps per namespace (bytes and count, from a metadata-only list refreshed now and then,
plus what this process added since). Either sends the context to the overflow store."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics

from ...errors import CapacityExceeded, ContextTooLarge
from .codec import SIZE_BYTES

APISERVER_LIMIT = 1024 * 1024
"""The apiserver rejects a ConfigMap whose data values add up to more (422, FieldValueTooLong)."""
OBJECT_DATA_LIMIT = 1_040_000
"""Archive plus provenance envelope: the largest BUILD_CONTEXT_CONFIGMAP_MAX_BYTES allowed."""

Listing = Callable[[str, bool], Iterable[Mapping[str, Any]]]
"""Our ConfigMaps of a namespace (metadata only); the flag asks for a quick probe."""


@dataclass
class Usage:
    """Our ConfigMaps in one namespace: as last listed, plus what this process added since."""

    bytes: int = 0
    count: int = 0
    listed_at: float | None = None


@dataclass(frozen=True)
class Caps:
    archive_bytes: int
    namespace_bytes: int
    namespace_count: int
    refresh_seconds: float


class CapacityGuard:
    def __init__(
        self,
        caps: Caps,
        listing: Listing,
        meter_provider: metrics.MeterProvider | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.caps = caps
        self._listing = listing
        self._monotonic = monotonic
        self._usage: dict[str, Usage] = {}
        self._lock = threading.RLock()
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

    def check_size(self, size: int, provenance: int = 0) -> None:
        """The archive against the setting; archive and provenance envelope together against
        the largest value the setting may take, which keeps the object under the apiserver's
        limit (the envelope is not the caller's to shrink, but usually a few KB)."""
        limit = min(self.caps.archive_bytes, APISERVER_LIMIT)
        if size > limit or size + provenance > OBJECT_DATA_LIMIT:
            raise ContextTooLarge(
                f"the archive is {size} bytes ({size + provenance} with its provenance); a "
                f"ConfigMap holds at most {limit} (BUILD_CONTEXT_CONFIGMAP_MAX_BYTES, under the "
                f"apiserver's 1 MiB; {OBJECT_DATA_LIMIT} with the provenance): send fewer "
                "or smaller files or dependencies, raise the limit (at most 1040000), or set "
                "BUILD_CONTEXT_OVERFLOW_STORAGE=s3 to store large contexts in S3"
            )

    def usage(self, namespace: str) -> Usage:
        with self._lock:
            found = self._usage.get(namespace, Usage())
            return Usage(found.bytes, found.count, found.listed_at)

    def reserve(self, namespace: str, size: int) -> bool:
        """Count the context in before creating it; False when it would pass a cap."""
        with self._lock:
            usage = self._usage.get(namespace)
            if (
                usage is None
                or usage.listed_at is None
                or (self._monotonic() - usage.listed_at >= self.caps.refresh_seconds)
            ):
                usage = self.refresh(namespace)
            if (
                usage.bytes + size > self.caps.namespace_bytes
                or usage.count + 1 > self.caps.namespace_count
            ):
                return False
            usage.bytes += size
            usage.count += 1
            return True

    def release(self, namespace: str, size: int) -> None:
        with self._lock:
            usage = self._usage.get(namespace)
            if usage is not None:
                usage.bytes = max(0, usage.bytes - size)
                usage.count = max(0, usage.count - 1)

    def refresh(self, namespace: str, probe: bool = False) -> Usage:
        """Sum the size annotations of a metadata-only list (no archive bytes move)."""
        total = count = 0
        for item in self._listing(namespace, probe):
            notes = item["metadata"].get("annotations") or {}
            with contextlib.suppress(ValueError):
                total += int(notes.get(SIZE_BYTES) or 0)
            count += 1
        usage = Usage(total, count, self._monotonic())
        with self._lock:
            self._usage[namespace] = usage
        return usage

    def exceeded(self, namespace: str, size: int) -> CapacityExceeded:
        usage = self.usage(namespace)
        return CapacityExceeded(
            f"namespace {namespace!r} already holds {usage.count} build-context ConfigMaps "
            f"with {usage.bytes} bytes; {size} more bytes would pass the cap of "
            f"{self.caps.namespace_bytes} bytes (BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_BYTES) "
            f"or {self.caps.namespace_count} ConfigMaps "
            "(BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_COUNT), which protects etcd: retry after "
            "cleanup has run, raise the cap within etcd's quota, or set "
            "BUILD_CONTEXT_OVERFLOW_STORAGE=s3"
        )

    def close(self) -> None:
        self._closed = True

    def _observe_bytes(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return self._observe(lambda usage: usage.bytes)

    def _observe_count(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return self._observe(lambda usage: usage.count)

    def _observe(self, value: Callable[[Usage], int]) -> Iterable[metrics.Observation]:
        if self._closed:
            return []
        with self._lock:
            return [
                metrics.Observation(value(usage), {"namespace": namespace})
                for namespace, usage in sorted(self._usage.items())
            ]
