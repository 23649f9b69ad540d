"""Any store, with each call a span: storage shows in a trace whatever the backend."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import trace

from ..archive import Archive
from ..contract import OwnerReference
from ..telemetry import Telemetry
from .base import ContextRecord, Listed, Store, Stored


class TracedStore(Store):
    def __init__(self, inner: Store, telemetry: Telemetry) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.telemetry = telemetry

    def check(self) -> None:
        self.inner.check()

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        with self.telemetry.storage_call(self.backend, "put_if_absent") as span:
            stored = self.inner.put_if_absent(archive, record, owner)
            span.set_attribute("build_context.reused", stored.reused)
            return stored

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        with self.telemetry.storage_call(self.backend, "get"):
            return self.inner.get(namespace, function, content_hash)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        with self.telemetry.storage_call(self.backend, "get_provenance"):
            return self.inner.get_provenance(namespace, function, content_hash)

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed]:
        """One span over the whole listing; not made current, so the caller's work between
        pages is not parented to it."""
        span = self.telemetry.tracer.start_span(
            "build_context.storage.list",
            kind=trace.SpanKind.CLIENT,
            attributes={"build_context.store": self.backend, "build_context.operation": "list"},
        )
        count = 0
        try:
            for item in self.inner.list(namespaces):
                count += 1
                yield item
        except Exception as error:
            span.record_exception(error)
            raise
        finally:
            span.set_attribute("build_context.listed", count)
            span.end()

    def delete(self, item: Listed, still_expired: Callable[[ContextRecord], bool]) -> bool:
        with self.telemetry.storage_call(self.backend, "delete") as span:
            deleted = self.inner.delete(item, still_expired)
            span.set_attribute("build_context.deleted", deleted)
            return deleted

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        """Backend-specific extras (S3's `delete_many`, the filesystem's `stale_temporaries`)
        pass through; calling one is a span too."""
        if name == "inner":
            raise AttributeError(name)
        value = getattr(self.inner, name)
        if name.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with self.telemetry.storage_call(self.backend, name) as span:
                result = value(*args, **kwargs)
                if name == "delete_many":
                    span.set_attribute("build_context.items", len(result))
                    span.set_attribute("build_context.deleted", sum(o is True for o in result))
                return result

        return traced
